"""Weight dynamics (dynamics/weights.py) and intruder dimensions (dynamics/intruders.py): known
answers on small random matrices, agreement with dense SVDs, and both entry points end to end on
checkpoint files of a tiny Whisper."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import help_text

from workflow_scripts.dynamics import intruders, weights
from workflow_scripts.dynamics.settings import IntruderSettings
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import read_provenance
from workflow_scripts.runs import Run

RUN_COLUMNS = ["run", "dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold"]


def random_factors(rng, d_out, d_in, rank, scale=1.0):
    return rng.normal(size=(rank, d_in)), scale * rng.normal(size=(d_out, rank))


def dense_left_max_cosines(w0, a, b, scaling, k):
    """The reference: a direct SVD of the dense W and of W0."""
    u = np.linalg.svd(w0 + scaling * (b @ a), full_matrices=False)[0][:, :k]
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    return np.abs(u.T @ u0).max(axis=1)


# --- weights: the statistics of one module --------------------------------------------------------


@pytest.mark.parametrize("d_out, d_in, rank", [(12, 20, 4), (30, 9, 3), (16, 16, 8)])
def test_spectrum_statistics_equal_those_of_the_dense_delta_w(d_out, d_in, rank):
    rng = np.random.default_rng(d_out * d_in)
    a, b = random_factors(rng, d_out, d_in, rank)
    a_final, b_final = random_factors(rng, d_out, d_in, rank)
    values = weights.module_statistics(a, b, 0.5, a_final, b_final, 2.0)
    sigma = np.linalg.svd(0.5 * (b @ a), compute_uv=False)
    assert values["frobenius"] == pytest.approx(np.linalg.norm(0.5 * (b @ a)), rel=1e-12)
    assert values["stable_rank"] == pytest.approx(np.sum(sigma**2) / sigma[0] ** 2, rel=1e-10)
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)
    assert values["k90"] == int(np.argmax(energy >= 0.9)) + 1
    p = sigma[:rank] / sigma[:rank].sum()
    assert values["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)
    dense_t, dense_final = 0.5 * (b @ a), 2.0 * (b_final @ a_final)
    cosine = np.vdot(dense_t, dense_final) / (np.linalg.norm(dense_t) * np.linalg.norm(dense_final))
    assert values["cos_to_final"] == pytest.approx(cosine, abs=1e-12)


def test_frobenius_inner_product_equals_the_dense_one_for_different_ranks():
    rng = np.random.default_rng(1)
    a_1, b_1 = random_factors(rng, 11, 7, 2)
    a_2, b_2 = random_factors(rng, 11, 7, 5)
    dense = np.sum((0.3 * b_1 @ a_1) * (1.7 * b_2 @ a_2))
    assert weights.frobenius_inner(a_1, b_1, 0.3, a_2, b_2, 1.7) == pytest.approx(dense, rel=1e-12)


def test_at_the_final_checkpoint_cos_and_subspace_similarity_are_one():
    rng = np.random.default_rng(2)
    a, b = random_factors(rng, 24, 16, 4)
    values = weights.module_statistics(a, b, 2.0, a, b, 2.0)
    assert values["cos_to_final"] == pytest.approx(1.0, abs=1e-12)
    assert values["subspace_mean_cos2"] == pytest.approx(1.0, abs=1e-12)
    assert values["subspace_min_cos"] == pytest.approx(1.0, abs=1e-12)


def test_the_opposite_update_has_cos_minus_one_and_the_same_column_space():
    rng = np.random.default_rng(3)
    a, b = random_factors(rng, 24, 16, 4)
    values = weights.module_statistics(a, -b, 2.0, a, b, 2.0)
    assert values["cos_to_final"] == pytest.approx(-1.0, abs=1e-12)
    assert values["subspace_mean_cos2"] == pytest.approx(1.0, abs=1e-12)


def test_subspace_min_cos_is_the_cosine_of_the_largest_principal_angle():
    # ΔW_t spans e1, e2; ΔW_T spans e1 and (e2 + e3)/√2: the angles are 0 and 45°.
    d = 6
    b_t = np.eye(d)[:, :2]
    b_final = np.stack([np.eye(d)[0], (np.eye(d)[1] + np.eye(d)[2]) / math.sqrt(2)], axis=1)
    a = np.eye(2, 5)
    values = weights.module_statistics(a, b_t, 1.0, a, b_final, 1.0)
    assert values["subspace_min_cos"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert values["subspace_mean_cos2"] == pytest.approx((1 + 0.5) / 2, abs=1e-12)


def test_a_zero_update_has_frobenius_zero_and_nan_everything_else():
    rng = np.random.default_rng(4)
    a, _ = random_factors(rng, 10, 8, 2)
    a_final, b_final = random_factors(rng, 10, 8, 2)
    values = weights.module_statistics(a, np.zeros((10, 2)), 2.0, a_final, b_final, 2.0)
    assert values["frobenius"] == 0.0
    assert all(math.isnan(values[name]) for name in weights.STATISTICS if name != "frobenius")


def test_weights_table_refuses_checkpoints_that_adapt_different_modules():
    rng = np.random.default_rng(5)
    factors = {(0, "q_proj"): random_factors(rng, 8, 8, 2)}
    with pytest.raises(InputError, match=r"adapt different modules .*\(0, 'v_proj'\)"):
        weights.weights_table(factors, 1.0, {(0, "v_proj"): random_factors(rng, 8, 8, 2)}, 1.0)


# --- intruders: the no-W method against a direct SVD -------------------------------------------


@pytest.mark.parametrize("d_out, d_in", [(20, 30), (30, 20), (25, 25), (40, 12)])
def test_top_left_singular_vectors_agree_with_a_direct_svd(d_out, d_in):
    rng = np.random.default_rng(d_out + 100 * d_in)
    w0 = rng.normal(size=(d_out, d_in))
    a, b = random_factors(rng, d_out, d_in, 4)
    sigma, u = intruders.top_left_singular_vectors(w0, a, b, 0.8, 6)
    dense_u, dense_sigma, _ = np.linalg.svd(w0 + 0.8 * (b @ a), full_matrices=False)
    np.testing.assert_allclose(sigma, dense_sigma[:6], rtol=1e-12)
    # The same vectors up to sign, and orthonormal (also when built as W v / σ for d_out > d_in).
    np.testing.assert_allclose(np.abs(np.sum(u * dense_u[:, :6], axis=0)), 1.0, atol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(intruders.max_base_cosines(w0, a, b, 0.8, 6),
                               dense_left_max_cosines(w0, a, b, 0.8, 6), atol=1e-10)


def test_with_d_out_above_d_in_only_w0s_column_space_counts():
    # W0 (40 × 12) has 12 left singular vectors; the other 28 directions of R^40 are its null
    # space. A planted direction inside the null space has cosine 0 with every u0_j: an intruder.
    rng = np.random.default_rng(6)
    w0 = rng.normal(size=(40, 12))
    u0 = np.linalg.svd(w0, full_matrices=True)[0]
    null_direction = u0[:, 20:21]
    a, b = rng.normal(size=(1, 12)), 50.0 * np.linalg.norm(w0, 2) * null_direction
    a = a / np.linalg.norm(a)
    cosines = intruders.max_base_cosines(w0, a, b, 1.0, 3)
    assert cosines[0] < 0.05  # W's top direction is the planted one, up to W0's 1/50 share
    assert np.all(cosines[1:] > 0.5)
    np.testing.assert_allclose(cosines, dense_left_max_cosines(w0, a, b, 1.0, 3), atol=1e-10)


# --- intruders: known answers ---------------------------------------------------------------------


@pytest.mark.parametrize("d_out, d_in", [(16, 24), (24, 16)])
def test_no_intruders_without_an_update(d_out, d_in):
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(d_out, d_in))
    a = rng.normal(size=(4, d_in))
    cosines = intruders.max_base_cosines(w0, a, np.zeros((d_out, 4)), 2.0, 10)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-10)
    assert intruders.intruder_counts(cosines, [0.3, 0.5, 0.7]) == {0.3: 0, 0.5: 0, 0.7: 0}


@pytest.mark.parametrize("d_out, d_in", [(16, 24), (24, 16)])
def test_no_intruders_for_an_update_inside_w0s_top_subspace(d_out, d_in):
    rng = np.random.default_rng(8)
    w0 = rng.normal(size=(d_out, d_in))
    u0, _, v0t = np.linalg.svd(w0, full_matrices=False)
    rank = 4
    b, a = u0[:, :rank] @ np.diag([3.0, 2.5, 2.0, 1.5]), v0t[:rank]
    cosines = intruders.max_base_cosines(w0, a, b, 1.0, 10)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)
    assert set(intruders.intruder_counts(cosines, [0.3, 0.5, 0.7]).values()) == {0}


@pytest.mark.parametrize("d_out, d_in", [(16, 24), (25, 16)])
def test_a_planted_direction_away_from_every_base_vector_is_an_intruder(d_out, d_in):
    # u* = the normalised sum of W0's left singular vectors: cosine 1/√n with each (n = 16).
    rng = np.random.default_rng(9)
    w0 = rng.normal(size=(d_out, d_in))
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    planted = u0.sum(axis=1, keepdims=True) / math.sqrt(u0.shape[1])
    direction = rng.normal(size=(1, d_in))
    b, a = 100.0 * np.linalg.norm(w0, 2) * planted, direction / np.linalg.norm(direction)
    cosines = intruders.max_base_cosines(w0, a, b, 1.0, 10)
    # W's top direction is u*, up to W0's 1/100 share.
    assert cosines[0] == pytest.approx(1 / math.sqrt(u0.shape[1]), abs=0.01)
    np.testing.assert_allclose(cosines, dense_left_max_cosines(w0, a, b, 1.0, 10), atol=1e-10)
    counts = intruders.intruder_counts(cosines, [0.3, 0.5, 0.7])
    assert counts[0.3] >= 1 and counts[0.5] >= 1 and counts[0.7] >= 1
    assert np.all(cosines[1:] > 0.3)  # the rest of W's top directions stay W0's


def test_k_above_the_smaller_side_is_refused():
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="k = 9: a 8 × 12 matrix has 8 singular vectors"):
        intruders.top_left_singular_vectors(rng.normal(size=(8, 12)), None, None, 0.0, 9)


def test_intruder_settings_take_the_schema_defaults_and_name_a_bad_key():
    assert IntruderSettings.from_spec({}) == IntruderSettings(k=10, epsilons=(0.3, 0.5, 0.7))
    from toy_runs import toy_config

    assert IntruderSettings.from_config(toy_config()) == IntruderSettings.from_spec({})
    assert IntruderSettings.from_spec({"k": 3}).params() == '{"epsilons":[0.3,0.5,0.7],"k":3}'
    with pytest.raises(InputError, match=r"dynamics\.intruders\.epsilons\.0"):
        IntruderSettings.from_spec({"epsilons": [1.5]})


# --- both entry points on checkpoint files of a tiny Whisper ---------------------------------------

TARGETS = "fc1+fc2+q_proj"
RANK = 4
RUN = Run("toy", "loso_speaker", "tiny", "lora", TARGETS, RANK, 0, 1)
WILDCARDS = ["--dataset", "toy", "--protocol", "loso_speaker", "--model", "tiny", "--method", "lora",
             "--targets", TARGETS, "--rank", str(RANK), "--seed", "0", "--fold", "1"]
SCALING = 2.0
STEPS_PER_EPOCH = 6


def lora_name(block: int, module: str, factor: str) -> str:
    parent = f"self_attn.{module}" if module.endswith("_proj") else module
    return f"base_model.model.encoder.layers.{block}.{parent}.lora_{factor}.default.weight"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny Whisper base folder (d_model 32, ffn 64, 2 blocks) and a run folder with checkpoints
    epoch0 (B = 0), epoch1 and epoch2 (the final one), written by save_checkpoint."""
    import torch

    from toy_runs import TINY_MODEL
    from workflow_scripts.models.build import build_checkpoint
    from workflow_scripts.train.checkpoints import checkpoint_file, save_checkpoint

    root = tmp_path_factory.mktemp("dynamics")
    build_checkpoint("tiny", TINY_MODEL, root / "tiny")
    shapes = {"q_proj": (32, 32), "fc1": (64, 32), "fc2": (32, 64)}
    rng = np.random.default_rng(11)
    a_init = {(block, m): rng.normal(size=(RANK, shapes[m][1])) for block in range(2) for m in shapes}
    factors = {"epoch0": {key: (a, np.zeros((shapes[key[1]][0], RANK))) for key, a in a_init.items()}}
    for epoch in (1, 2):
        factors[f"epoch{epoch}"] = {key: (a + 0.1 * rng.normal(size=a.shape),
                                          epoch * rng.normal(size=(shapes[key[1]][0], RANK)))
                                    for key, a in a_init.items()}
    run_dir = root / "runs" / RUN.id
    for checkpoint, pairs in factors.items():
        state = {"base_model.model.classifier.modules_to_save.default.weight": torch.ones(4, 8)}
        for (block, module), (a, b) in pairs.items():
            state[lora_name(block, module, "A")] = torch.tensor(a, dtype=torch.float32)
            state[lora_name(block, module, "B")] = torch.tensor(b, dtype=torch.float32)
        epoch = int(checkpoint.removeprefix("epoch"))
        save_checkpoint(checkpoint_file(run_dir, checkpoint), state, {
            "run": RUN.id, "method": "lora", "checkpoint": checkpoint, "step": epoch * STEPS_PER_EPOCH,
            "epoch": float(epoch), "steps_per_epoch": STEPS_PER_EPOCH, "scaling": SCALING})
    return {"base": root / "tiny", "run_dir": run_dir, "factors": factors, "root": root}


def run_entry_point(module: str, args: list[str]) -> None:
    """Run an entry point in a fresh interpreter and check it never imported torch."""
    script = (f"import sys; from {module} import main; main({args!r}); "
              "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr


def weights_args(tiny_run, checkpoint, out, final="epoch2"):
    return [*WILDCARDS, "--run-dir", str(tiny_run["run_dir"]), "--checkpoint-id", checkpoint,
            "--final-id", final, "--out", str(out)]


def test_weights_entry_point_writes_the_contract_table_without_torch(tiny_run, tmp_path):
    outs = {}
    for checkpoint in ("epoch0", "epoch1", "epoch2"):
        outs[checkpoint] = tmp_path / "dynamics_weights" / RUN.id / f"{checkpoint}.parquet"
    run_entry_point("workflow_scripts.dynamics.weights", weights_args(tiny_run, "epoch1", outs["epoch1"]))
    for checkpoint in ("epoch0", "epoch2"):
        weights.main(weights_args(tiny_run, checkpoint, outs[checkpoint]))
    tables = {checkpoint: pd.read_parquet(out) for checkpoint, out in outs.items()}

    table = tables["epoch1"]
    assert list(table.columns) == [*RUN_COLUMNS, "checkpoint", "step", "epoch", "block", "module",
                                   "statistic", "value"]
    assert table["run"].unique().tolist() == [RUN.id]
    assert (table["checkpoint"] == "epoch1").all()
    assert (table["step"] == 6).all() and (table["epoch"] == 1.0).all()
    assert len(table) == 2 * 3 * len(weights.STATISTICS)
    assert sorted(table["module"].unique()) == ["fc1", "fc2", "q_proj"]
    # The values are the checkpoint's: frobenius of s·B·A as saved (float32).
    a, b = (m.astype(np.float32).astype(np.float64) for m in tiny_run["factors"]["epoch1"][(1, "fc1")])
    row = table[(table["block"] == 1) & (table["module"] == "fc1") & (table["statistic"] == "frobenius")]
    assert row["value"].item() == pytest.approx(np.linalg.norm(SCALING * (b @ a)), rel=1e-10)

    base, final = tables["epoch0"], tables["epoch2"]
    assert (base.loc[base["statistic"] == "frobenius", "value"] == 0).all()
    assert base.loc[base["statistic"] != "frobenius", "value"].isna().all()
    for name in ("cos_to_final", "subspace_mean_cos2", "subspace_min_cos"):
        np.testing.assert_allclose(final.loc[final["statistic"] == name, "value"], 1.0, atol=1e-9)

    record = read_provenance(outs["epoch1"])
    assert record["step"] == "dynamics_weights"
    assert record["checkpoint"] == "epoch1" and record["final"] == "epoch2"
    assert record["scaling"] == SCALING


def test_intruders_entry_point_writes_the_contract_table_without_torch(tiny_run, tmp_path):
    spec = json.dumps({"k": 10, "epsilons": [0.3, 0.5, 0.7]})
    outs = {checkpoint: tmp_path / f"{checkpoint}.parquet" for checkpoint in ("epoch0", "epoch2")}
    for checkpoint, out in outs.items():
        args = [*WILDCARDS, "--run-dir", str(tiny_run["run_dir"]), "--checkpoint-id", checkpoint,
                "--checkpoint", str(tiny_run["base"]), "--spec", spec, "--out", str(out)]
        if checkpoint == "epoch2":
            run_entry_point("workflow_scripts.dynamics.intruders", args)
        else:
            intruders.main(args)
    base, final = pd.read_parquet(outs["epoch0"]), pd.read_parquet(outs["epoch2"])
    assert list(final.columns) == [*RUN_COLUMNS, "checkpoint", "step", "epoch", "block", "module", "epsilon",
                                   "k", "value"]
    assert len(final) == 2 * 3 * 3 and (final["k"] == 10).all()
    assert sorted(final["epsilon"].unique()) == [0.3, 0.5, 0.7]
    assert (base["value"] == 0).all()  # W = W0 at the initialisation
    # The counts are those of a direct SVD of the dense W = W0 + s·B·A.
    from safetensors.numpy import load_file

    w0 = load_file(str(tiny_run["base"] / "model.safetensors"))["model.encoder.layers.1.fc1.weight"]
    a, b = (m.astype(np.float32).astype(np.float64) for m in tiny_run["factors"]["epoch2"][(1, "fc1")])
    expected = intruders.intruder_counts(dense_left_max_cosines(w0.astype(np.float64), a, b, SCALING, 10),
                                         [0.3, 0.5, 0.7])
    rows = final[(final["block"] == 1) & (final["module"] == "fc1")].set_index("epsilon")["value"]
    assert rows.to_dict() == {eps: float(count) for eps, count in expected.items()}
    assert read_provenance(outs["epoch2"])["settings"] == {"k": 10, "epsilons": [0.3, 0.5, 0.7]}


def test_a_checkpoint_the_run_did_not_keep_names_the_run_the_checkpoint_and_the_setting(tiny_run, tmp_path):
    not_kept = rf"{re.escape(RUN.id)}: checkpoint epoch3 was not kept.*training\.checkpoints"
    with pytest.raises(InputError, match=not_kept):
        weights.main(weights_args(tiny_run, "epoch3", tmp_path / "x.parquet"))
    with pytest.raises(InputError, match=rf"{re.escape(RUN.id)}: checkpoint step5 was not kept"):
        intruders.main([*WILDCARDS, "--run-dir", str(tiny_run["run_dir"]), "--checkpoint-id", "step5",
                        "--checkpoint", str(tiny_run["base"]), "--spec", "{}",
                        "--out", str(tmp_path / "y.parquet")])
    assert not list(tmp_path.iterdir())


def test_a_full_run_and_a_too_large_k_are_refused_clearly(tiny_run, tmp_path):
    full = [*WILDCARDS[:7], "full", "--targets", "none", "--rank", "0", "--seed", "0", "--fold", "1"]
    with pytest.raises(InputError, match="method full keeps whole weight matrices"):
        weights.main([*full, "--run-dir", str(tiny_run["run_dir"]), "--checkpoint-id", "epoch1",
                      "--final-id", "epoch2", "--out", str(tmp_path / "x.parquet")])
    with pytest.raises(InputError, match=r"dynamics\.intruders\.k = 40 is too large for block 0 q_proj"):
        intruders.main([*WILDCARDS, "--run-dir", str(tiny_run["run_dir"]), "--checkpoint-id", "epoch1",
                        "--checkpoint", str(tiny_run["base"]), "--spec", '{"k": 40}',
                        "--out", str(tmp_path / "y.parquet")])


def test_a_checkpoint_of_another_run_is_refused(tiny_run, tmp_path):
    other = Run("toy", "loso_speaker", "tiny", "lora", TARGETS, RANK, 1, 1)
    other_dir = tiny_run["root"] / "runs" / other.id / "checkpoints"
    other_dir.mkdir(parents=True)
    source = tiny_run["run_dir"] / "checkpoints" / "epoch1.safetensors"
    (other_dir / "epoch1.safetensors").write_bytes(source.read_bytes())
    message = rf"holds run {re.escape(RUN.id)} at epoch1, not run {re.escape(other.id)}"
    with pytest.raises(InputError, match=message):
        weights.checkpoint_factors(other, other_dir.parent, "epoch1")


def test_a_base_folder_without_the_module_is_named(tiny_run, tmp_path):
    from safetensors.numpy import save_file

    save_file({"model.encoder.layers.0.fc1.weight": np.zeros((64, 32), np.float32)},
              str(tmp_path / "model.safetensors"))
    base = intruders.BaseWeights(tmp_path)
    assert base.weight(0, "fc1").dtype == np.float64
    with pytest.raises(InputError, match=r"has no model\.encoder\.layers\.0\.self_attn\.q_proj\.weight"):
        base.weight(0, "q_proj")
    with pytest.raises(InputError, match="no model.safetensors or model.safetensors.index.json"):
        intruders.BaseWeights(tmp_path / "missing")


@pytest.mark.parametrize("module", ["workflow_scripts.dynamics.weights",
                                    "workflow_scripts.dynamics.intruders"])
def test_entry_points_have_help(module):
    assert "--checkpoint-id" in help_text(module)
