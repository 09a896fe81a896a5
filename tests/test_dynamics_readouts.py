"""Training dynamics, per checkpoint: the representation change (linear debiased CKA of each
layer to the base and final checkpoints, with its permutation null) and the readouts (probes and
the logit lens with the head at that checkpoint), on small checkpoint stores written by the real
writer and checkpoint files written by the real format; both entry points end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analyses.cka.estimators import cka, permutations
from workflow_scripts.analyses.logit_lens import apply_head, lens_statistics
from workflow_scripts.analyses.probes import probe_table
from workflow_scripts.capture.store import STRING, CaptureStore, CaptureStoreWriter, StoreShape
from workflow_scripts.config import config_hash
from workflow_scripts.dynamics import readouts as readouts_module
from workflow_scripts.dynamics import representation as representation_module
from workflow_scripts.dynamics.readouts import checkpoint_head, head_parameter, readouts
from workflow_scripts.dynamics.representation import representation_change
from workflow_scripts.dynamics.settings import ReadoutSettings, RepresentationSettings
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import read_provenance
from workflow_scripts.runs import Run

CLASSES = ["a", "b", "c", "d"]
N_LAYERS, D_MODEL, PROJ = 2, 8, 5
#: clips per class in each split
PER_CLASS = {"train": 6, "val": 4, "test": 5}
RUN = Run("toy", "loso_speaker", "tiny", "lora", "q_proj+v_proj", 4, 0, 1)
FULL_RUN = Run("toy", "loso_speaker", "tiny", "full", "q_proj+v_proj", 4, 0, 1)
PROBES = {"c_grid": [0.1, 1.0], "max_iter": 500, "seed": 0}
STEPS_PER_EPOCH = 10


def clip_table(order=None, rename=None):
    """Utterance ids, splits and labels of the stores' clips (optionally reordered or renamed)."""
    ids, splits, labels = [], [], []
    for split, k in PER_CLASS.items():
        for label in range(len(CLASSES)):
            for i in range(k):
                ids.append(f"{split}_{label}_{i}")
                splits.append(split)
                labels.append(label)
    ids, splits, labels = np.array(ids), np.array(splits), np.array(labels)
    if rename:
        ids = np.array([rename.get(utt, utt) for utt in ids])
    if order is not None:
        ids, splits, labels = ids[order], splits[order], labels[order]
    return ids, splits, labels


def checkpoint_arrays(seed: int, labels: np.ndarray):
    """Pooled residuals and normed residuals [clips, L + 1, d] with a class signal that grows with
    the layer, and logits [clips, classes]."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(100).normal(size=(len(CLASSES), D_MODEL))
    resid = rng.normal(size=(len(labels), N_LAYERS + 1, D_MODEL))
    resid += np.arange(N_LAYERS + 1)[None, :, None] * directions[labels][:, None, :]
    normed = resid / np.linalg.norm(resid, axis=-1, keepdims=True)
    logits = rng.normal(size=(len(labels), len(CLASSES))) + 2 * np.eye(len(CLASSES))[labels]
    return resid.astype(np.float32), normed.astype(np.float32), logits.astype(np.float32)


def write_checkpoint_store(path: Path, checkpoint: str, step: int, arrays=None, *, seed=0, run=RUN, order=None,
                           rename=None, attrs_extra=None, checkpoint_attrs=True) -> CaptureStore:
    """A checkpoint store (an acts store without frame arrays) of ``run`` at ``checkpoint``."""
    ids, splits, labels = clip_table(order, rename)
    resid, normed, logits = arrays if arrays is not None else checkpoint_arrays(seed, labels)
    n = len(ids)
    shape = StoreShape("acts", N_LAYERS, D_MODEL, tuple(CLASSES), {}, (), (), "float32")
    attrs = {"run": run.id, "dataset": run.dataset, "protocol": run.protocol, "model": run.model,
             "method": run.method, "targets": run.target_modules, "rank": run.rank, "alpha": 8.0,
             "seed": run.seed, "fold": run.fold, "legacy": False, "config_hash": "test", "provenance": {}}
    if checkpoint_attrs:
        attrs.update({"checkpoint": checkpoint, "step": step, "epoch": step / STEPS_PER_EPOCH})
    attrs.update(attrs_extra or {})
    with CaptureStoreWriter(path, shape, attrs) as writer:
        writer.append_utterances({
            "utterance": ids.astype(STRING), "speaker": np.array(["s"] * n).astype(STRING),
            "split": splits.astype(STRING), "label": labels, "prediction": np.argmax(logits, -1),
            "logits": logits, "n_frames": np.full(n, 10), "resid": resid, "normed": normed,
            "attn": resid[:, 1:], "mlp": resid[:, 1:], "contribution": np.zeros((n, N_LAYERS, 6)),
        })
    return CaptureStore(path, kind="acts", run=run.id)


def head(seed: int):
    rng = np.random.default_rng(seed)
    return ((rng.normal(size=(PROJ, D_MODEL)), rng.normal(size=PROJ)),
            (rng.normal(size=(len(CLASSES), PROJ)), rng.normal(size=len(CLASSES))))


def write_checkpoint_file(run_dir: Path, checkpoint: str, step: int, projector, classifier, run=RUN,
                          drop: str | None = None) -> Path:
    """A checkpoint file in the real format: the head under the run's own names, a LoRA factor."""
    import torch

    from workflow_scripts.train.checkpoints import checkpoint_file, save_checkpoint

    state = {head_parameter(run.method, module, parameter): torch.from_numpy(np.asarray(value, np.float32))
             for module, pair in zip(("projector", "classifier"), (projector, classifier))
             for parameter, value in zip(("weight", "bias"), pair)}
    state.pop(drop, None)
    if run.method == "lora":
        state["base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(4, D_MODEL)
    path = checkpoint_file(run_dir, checkpoint)
    save_checkpoint(path, state, {"run": run.id, "method": run.method, "checkpoint": checkpoint, "step": step,
                                  "epoch": step / STEPS_PER_EPOCH, "steps_per_epoch": STEPS_PER_EPOCH,
                                  "scaling": 2.0 if run.method == "lora" else ""})
    return path


SETTINGS = RepresentationSettings.from_spec({"permutations": 30, "seed": 3})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamics")
    base = write_checkpoint_store(root / "epoch0.zarr", "epoch0", 0, seed=0)
    final = write_checkpoint_store(root / "epoch2.zarr", "epoch2", 20, seed=2)
    middle = write_checkpoint_store(root / "step3.zarr", "step3", 3, seed=1)
    return {"root": root, "base": base, "final": final, "middle": middle}


def test_settings_take_their_keys_and_refuse_others():
    assert RepresentationSettings.from_spec({}).as_dict() == {"split": "test", "permutations": 20, "seed": 0}
    readout = ReadoutSettings.from_spec({"split": "val"})
    assert readout.split == "val" and readout.probes.as_dict() == {"c_grid": [0.001, 0.01, 0.1, 1.0, 10.0],
                                                                   "max_iter": 2000, "seed": 0}
    with pytest.raises(InputError, match=r"dynamics\.checkpoints"):
        RepresentationSettings.from_spec({"checkpoints": "all"})
    with pytest.raises(InputError, match=r"dynamics.split: 'nope' is not one of"):
        ReadoutSettings.from_spec({"split": "nope"})
    with pytest.raises(InputError, match=r"analyses.probes.max_iter"):
        ReadoutSettings.from_spec({"probes": {"max_iter": 0}})
    from toy_runs import toy_config

    config = toy_config()
    config["dynamics"]["split"], config["dynamics"]["permutations"] = "val", 7
    assert RepresentationSettings.from_config(config).as_dict() == {"split": "val", "permutations": 7, "seed": 0}
    assert ReadoutSettings.from_config(config).as_dict() == {"probes": config["analyses"]["probes"], "split": "val"}


def test_cka_of_a_store_with_itself_is_one_at_every_layer(stores):
    base = stores["base"]
    table = representation_change(base, base, base, SETTINGS)
    assert list(table.columns) == representation_module.COLUMNS
    assert len(table) == 2 * (N_LAYERS + 1) and set(table["reference"]) == {"base", "final"}
    np.testing.assert_allclose(table["value"], 1.0, rtol=0, atol=1e-12)
    assert (table["null_p95"] < 0.5).all()  # shuffled rows are unrelated
    assert (table["clips"] == 4 * PER_CLASS["test"]).all()
    assert (table["checkpoint"] == "epoch0").all() and (table["step"] == 0).all() and (table["epoch"] == 0).all()
    without_null = representation_change(base, base, base, RepresentationSettings.from_spec({"permutations": 0}))
    assert without_null["null_mean"].isna().all() and without_null["null_p95"].isna().all()
    np.testing.assert_allclose(without_null["value"], 1.0, rtol=0, atol=1e-12)


def test_values_are_the_linear_debiased_cka_of_the_split_s_pooled_residuals(stores):
    store, base, final = stores["middle"], stores["base"], stores["final"]
    table = representation_change(store, base, final, SETTINGS)
    test = (store.utterances()["split"] == "test").to_numpy()
    n = int(test.sum())
    shuffles = permutations(n, SETTINGS.permutations, SETTINGS.seed)
    for reference, other in (("base", base), ("final", final)):
        for layer in range(N_LAYERS + 1):
            x = store.pooled("resid")[test, layer]
            y = other.pooled("resid")[test, layer]
            row = table[(table["reference"] == reference) & (table["layer"] == layer)].iloc[0]
            assert row["value"] == pytest.approx(cka(x, y, "linear", "debiased"), abs=1e-12)
            null = np.array([cka(x, y[p], "linear", "debiased") for p in shuffles])
            assert row["null_mean"] == pytest.approx(null.mean(), abs=1e-12)
            assert row["null_p95"] == pytest.approx(np.percentile(null, 95), abs=1e-12)
    assert (table["checkpoint"] == "step3").all() and (table["step"] == 3).all()
    assert table["epoch"].iloc[0] == pytest.approx(0.3)
    # the layers carry a shared class signal that grows with depth: CKA rises with the layer
    base_values = table[table["reference"] == "base"].sort_values("layer")["value"].to_numpy()
    assert base_values[0] < 0.5 < base_values[-1]


def test_a_checkpoint_equal_to_the_base_gives_one_and_a_null_well_below(stores, tmp_path):
    base = stores["base"]
    arrays = (base.pooled("resid"), base.pooled("normed"), base.logits())
    same = write_checkpoint_store(tmp_path / "step1.zarr", "step1", 1, arrays)
    table = representation_change(same, base, stores["final"], SETTINGS)
    to_base = table[table["reference"] == "base"]
    np.testing.assert_allclose(to_base["value"], 1.0, rtol=0, atol=1e-12)
    assert (to_base["null_p95"] < 0.5).all() and (to_base["null_mean"].abs() < 0.2).all()
    assert (table[table["reference"] == "final"]["value"] < 0.999).all()


def test_stores_with_other_clips_or_another_order_are_refused_naming_both(stores, tmp_path):
    n = sum(PER_CLASS.values()) * len(CLASSES)
    reordered = write_checkpoint_store(tmp_path / "reordered.zarr", "step1", 1, order=np.arange(n)[::-1])
    with pytest.raises(InputError, match=r"reordered.zarr and .*epoch0.zarr hold different clips "
                                         r"\(the same clips in another order\)"):
        representation_change(reordered, stores["base"], stores["final"], SETTINGS)
    renamed = write_checkpoint_store(tmp_path / "renamed.zarr", "step1", 1, rename={"test_0_0": "other"})
    with pytest.raises(InputError, match=r"renamed.zarr and .*epoch0.zarr hold different clips "
                                         r"\(2 clips in one only"):
        representation_change(renamed, stores["base"], stores["final"], SETTINGS)
    other_final = write_checkpoint_store(tmp_path / "other_final.zarr", "epoch2", 20, rename={"val_0_0": "x"})
    with pytest.raises(InputError, match=r"step3.zarr and .*other_final.zarr hold different clips"):
        representation_change(stores["middle"], stores["base"], other_final, SETTINGS)


def test_wrong_references_and_non_checkpoint_stores_are_refused(stores, tmp_path):
    base, final, middle = stores["base"], stores["final"], stores["middle"]
    with pytest.raises(InputError, match=r"--base .*step3.zarr holds checkpoint step3, not the initialisation"):
        representation_change(middle, middle, final, SETTINGS)
    with pytest.raises(InputError, match=r"--final .*step3.zarr holds checkpoint step3, not an epoch checkpoint"):
        representation_change(base, base, middle, SETTINGS)
    early = write_checkpoint_store(tmp_path / "epoch1.zarr", "epoch1", 10, seed=4)
    with pytest.raises(InputError, match=r"--final .*epoch1.zarr holds checkpoint epoch1, which is not the "
                                         r"run's final one: .*epoch2.zarr holds a later one \(epoch2\)"):
        representation_change(final, base, early, SETTINGS)
    plain = write_checkpoint_store(tmp_path / "acts.zarr", "", 0, checkpoint_attrs=False)
    with pytest.raises(InputError, match=r"acts.zarr is not a checkpoint store"):
        representation_change(plain, base, final, SETTINGS)


def test_the_split_is_dynamics_split_and_one_without_four_clips_is_named(stores):
    few = RepresentationSettings.from_spec({"split": "train"})
    table = representation_change(stores["middle"], stores["base"], stores["final"], few)
    assert (table["clips"] == 4 * PER_CLASS["train"]).all()
    from dataclasses import replace

    with pytest.raises(InputError, match=r"dynamics.split: .*step3.zarr has 0 'nope' clips"):
        representation_change(stores["middle"], stores["base"], stores["final"], replace(few, split="nope"))


# --- readouts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [RUN, FULL_RUN], ids=["lora", "full"])
def test_the_head_is_read_from_the_checkpoint_under_the_run_s_names(tmp_path, run):
    from workflow_scripts.train.checkpoints import load_checkpoint_tensors

    projector, classifier = head(7)
    path = write_checkpoint_file(tmp_path, "step3", 3, projector, classifier, run=run)
    read = checkpoint_head(load_checkpoint_tensors(path, "np"), run.method, path)
    for got, want in zip((*read[0], *read[1]), (*projector, *classifier)):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, np.asarray(want, np.float32))
    missing = write_checkpoint_file(tmp_path / "m", "step3", 3, projector, classifier, run=run,
                                    drop=head_parameter(run.method, "classifier", "bias"))
    with pytest.raises(InputError, match=r"step3.safetensors: a .* checkpoint lacks the head parameters \[.*"
                                         r"classifier.*bias'\]"):
        checkpoint_head(load_checkpoint_tensors(missing, "np"), run.method, missing)


def test_peft_keeps_the_lora_head_under_the_names_read(tmp_path):
    # The names of a real model's trainable head, built as training builds it (torch here only).
    from toy_runs import TINY_MODEL

    from workflow_scripts.models.build import build_checkpoint
    from workflow_scripts.train.methods import build_model, trainable_state

    build_checkpoint("tiny", TINY_MODEL, tmp_path / "tiny")
    lora = {"dropout": 0.0, "alpha": 2.0, "alpha_policy": "ratio"}
    for run, settings in ((RUN, lora), (FULL_RUN, None)):
        state = trainable_state(build_model(tmp_path / "tiny", CLASSES, run, settings))
        for module in ("projector", "classifier"):
            for parameter in ("weight", "bias"):
                assert head_parameter(run.method, module, parameter) in state


def test_lens_rows_are_lens_statistics_with_the_checkpoint_s_head_and_probe_rows_are_probe_table(stores):
    store = stores["middle"]
    projector, classifier = head(5)
    settings = ReadoutSettings.from_spec({"probes": PROBES, "split": "test"})
    table = readouts(store, projector, classifier, settings)
    assert list(table.columns) == readouts_module.COLUMNS
    assert set(table["readout"]) == {"probe", "lens raw", "lens normed"}
    assert (table["checkpoint"] == "step3").all() and (table["step"] == 3).all()
    utterances = store.utterances()
    test = (utterances["split"] == "test").to_numpy()
    labels = utterances["label"].to_numpy()
    for lens, quantity in (("lens raw", "resid"), ("lens normed", "normed")):
        expected = lens_statistics(store.logits()[test], apply_head(store.pooled(quantity)[test], projector,
                                                                    classifier), labels[test], CLASSES)
        got = table[table["readout"] == lens][["layer", "statistic", "value"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
        assert (table[table["readout"] == lens]["clips"] == test.sum()).all()
    expected = probe_table(store.pooled("resid"), labels, utterances["split"].to_numpy(), CLASSES, PROBES)
    got = table[table["readout"] == "probe"][["readout", "layer", "statistic", "value", "clips"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
    # the planted signal grows with depth: the last layer's probe is far above chance
    uar = got[got["statistic"] == "uar"].set_index("layer")["value"]
    assert uar[N_LAYERS] > 0.8
    # another head at the same checkpoint gives other lens values: the head is the checkpoint's
    other = readouts(store, *head(6), settings)
    assert not np.allclose(other[other["readout"] == "lens raw"]["value"],
                           table[table["readout"] == "lens raw"]["value"])


def test_the_lens_split_is_dynamics_split(stores):
    settings = ReadoutSettings.from_spec({"probes": PROBES, "split": "val"})
    table = readouts(stores["middle"], *head(5), settings)
    assert (table[table["readout"] == "lens raw"]["clips"] == 4 * PER_CLASS["val"]).all()
    from dataclasses import replace

    with pytest.raises(InputError, match=r"dynamics.split: .*step3.zarr has no 'nope' clips"):
        readouts(stores["middle"], *head(5), replace(settings, split="nope"))


# --- entry points ----------------------------------------------------------------------------------


def run_arguments(run: Run) -> list[str]:
    return ["--dataset", run.dataset, "--protocol", run.protocol, "--model", run.model, "--method", run.method,
            "--targets", run.targets, "--rank", str(run.rank), "--seed", str(run.seed), "--fold", str(run.fold)]


RUN_COLUMNS = ["run", "dataset", "protocol", "model", "method", "targets", "rank", "seed", "fold"]


def test_representation_entry_point_writes_the_table_with_run_columns_and_provenance(stores, tmp_path):
    spec = {"split": "test", "permutations": 5, "seed": 1}
    out = tmp_path / "dynamics_representation" / "run" / "step3.parquet"
    representation_module.main([*run_arguments(RUN), "--acts", str(stores["middle"].path), "--base",
                                str(stores["base"].path), "--final", str(stores["final"].path),
                                "--spec", json.dumps(spec), "--out", str(out)])
    table = pd.read_parquet(out)
    assert list(table.columns) == RUN_COLUMNS + representation_module.COLUMNS
    assert (table["run"] == RUN.id).all() and len(table) == 2 * (N_LAYERS + 1)
    expected = representation_change(stores["middle"], stores["base"], stores["final"],
                                      RepresentationSettings.from_spec(spec))
    pd.testing.assert_frame_equal(table[representation_module.COLUMNS], expected)
    record = read_provenance(out)
    assert record["step"] == "dynamics_representation" and record["config_hash"] == config_hash(spec)


def test_readouts_entry_point_reads_the_head_from_the_run_s_checkpoint(stores, tmp_path):
    run_dir = tmp_path / "runs" / "run"
    projector, classifier = head(8)
    write_checkpoint_file(run_dir, "step3", 3, projector, classifier)
    spec = {"probes": PROBES, "split": "test"}
    out = tmp_path / "dynamics_readouts" / "run" / "step3.parquet"
    arguments = [*run_arguments(RUN), "--acts", str(stores["middle"].path), "--run-dir", str(run_dir),
                 "--spec", json.dumps(spec), "--out", str(out)]
    readouts_module.main([*arguments, "--checkpoint-id", "step3"])
    table = pd.read_parquet(out)
    assert list(table.columns) == RUN_COLUMNS + readouts_module.COLUMNS
    head32 = tuple(tuple(np.asarray(v, np.float32).astype(np.float64) for v in pair) for pair in (projector, classifier))
    expected = readouts(stores["middle"], *head32, ReadoutSettings.from_spec(spec))
    pd.testing.assert_frame_equal(table[readouts_module.COLUMNS], expected)
    assert read_provenance(out)["config_hash"] == config_hash(spec)
    # a checkpoint the run did not keep names the run, the checkpoint and training.checkpoints
    with pytest.raises(InputError, match=re.escape(RUN.id) + r": checkpoint epoch1 was not kept: .* holds \['step3'\].*"
                                         r"training.checkpoints"):
        readouts_module.main([*arguments, "--checkpoint-id", "epoch1"])
    # a store of another checkpoint than the one asked for
    write_checkpoint_file(run_dir, "epoch2", 20, projector, classifier)
    with pytest.raises(InputError, match=r"step3.zarr holds checkpoint step3, but --checkpoint-id is epoch2"):
        readouts_module.main([*arguments, "--checkpoint-id", "epoch2"])


def test_both_entry_points_run_without_torch(stores, tmp_path):
    run_dir = tmp_path / "runs" / "run"
    write_checkpoint_file(run_dir, "step3", 3, *head(9))
    common = [*run_arguments(RUN), "--acts", str(stores["middle"].path)]
    representation = [*common, "--base", str(stores["base"].path), "--final", str(stores["final"].path),
                      "--spec", "{}", "--out", str(tmp_path / "r.parquet")]
    readout = [*common, "--run-dir", str(run_dir), "--checkpoint-id", "step3",
               "--spec", json.dumps({"probes": PROBES}), "--out", str(tmp_path / "o.parquet")]
    script = ("import sys\n"
              "from workflow_scripts.dynamics import readouts, representation\n"
              f"representation.main({representation!r})\n"
              f"readouts.main({readout!r})\n"
              "assert 'torch' not in sys.modules, 'a dynamics job imported torch'\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == 2 * (N_LAYERS + 1)
    assert len(pd.read_parquet(tmp_path / "o.parquet")) > 0
