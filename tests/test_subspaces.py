"""Subspaces: principal angles with known answers, the chance level against simulation, and a
comparison group of written adapters (what differs, ΔW = 0, the group checks)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_cli import help_text
from test_weight_spectra import random_factors, write_adapter

from workflow_scripts.runs import Run

from workflow_scripts.analyses.subspaces import (
    chance_mean_cos2,
    group_subspaces,
    main,
    pair_label,
    principal_angles,
    subspace_similarity,
)
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import read_provenance



def random_basis(rng, d: int, k: int) -> np.ndarray:
    """An orthonormal basis of a uniformly random k-dimensional subspace of R^d."""
    q, r = np.linalg.qr(rng.normal(size=(d, k)))
    return q * np.sign(np.diag(r))


def unit(d: int, i: int) -> np.ndarray:
    return np.eye(d)[:, i]


# --- principal angles ---------------------------------------------------------------------------


def test_a_subspace_with_itself_has_zero_angles_whatever_its_basis():
    rng = np.random.default_rng(0)
    u = random_basis(rng, 30, 5)
    rotation = random_basis(rng, 5, 5)  # another orthonormal basis of the same subspace
    for other in (u, u @ rotation):
        cosines = principal_angles(u, other)
        assert cosines.shape == (5,)
        np.testing.assert_allclose(np.degrees(np.arccos(cosines)), 0.0, atol=1e-5)
        assert np.all(cosines <= 1.0)  # clipped, although rounding can exceed 1


def test_orthogonal_subspaces_are_at_ninety_degrees():
    u1, u2 = np.eye(6)[:, :2], np.eye(6)[:, 2:5]
    cosines = principal_angles(u1, u2)
    assert cosines.shape == (2,)
    np.testing.assert_allclose(np.degrees(np.arccos(cosines)), 90.0)
    similarity = subspace_similarity(u1, u2)
    assert similarity["mean_cos2"] == 0 and similarity["max_cos"] == 0


def test_a_plane_rotated_by_known_angles():
    # span(e1, e2) against span(cos a·e1 + sin a·e3, cos b·e2 + sin b·e4): angles a and b.
    a, b = math.radians(30), math.radians(60)
    plane = np.stack([unit(4, 0), unit(4, 1)], axis=1)
    rotated = np.stack([math.cos(a) * unit(4, 0) + math.sin(a) * unit(4, 2),
                        math.cos(b) * unit(4, 1) + math.sin(b) * unit(4, 3)], axis=1)
    np.testing.assert_allclose(np.degrees(np.arccos(principal_angles(plane, rotated))), [30.0, 60.0])
    similarity = subspace_similarity(plane, rotated)
    assert similarity["mean_cos2"] == pytest.approx((math.cos(a) ** 2 + math.cos(b) ** 2) / 2)
    assert similarity["max_cos"] == pytest.approx(math.cos(a))
    # Rotating the plane about e2 by 40°: one direction shared (0°), the other at 40°.
    theta = math.radians(40)
    tilted = np.stack([math.cos(theta) * unit(4, 0) + math.sin(theta) * unit(4, 2), unit(4, 1)], axis=1)
    np.testing.assert_allclose(np.degrees(np.arccos(principal_angles(plane, tilted))), [0.0, 40.0], atol=1e-6)


def test_cosines_are_decreasing_and_as_many_as_the_smaller_dimension():
    rng = np.random.default_rng(1)
    cosines = principal_angles(random_basis(rng, 20, 3), random_basis(rng, 20, 7))
    assert cosines.shape == (3,) and np.all(np.diff(cosines) <= 0)
    assert np.all((cosines >= 0) & (cosines <= 1))


def test_bad_bases_are_refused_and_an_empty_one_gives_nan():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="not orthonormal"):
        principal_angles(rng.normal(size=(10, 3)), random_basis(rng, 10, 2))
    with pytest.raises(ValueError, match="different spaces"):
        principal_angles(random_basis(rng, 10, 3), random_basis(rng, 11, 3))
    similarity = subspace_similarity(random_basis(rng, 10, 3), np.zeros((10, 0)))
    assert similarity["k2"] == 0 and math.isnan(similarity["mean_cos2"]) and math.isnan(similarity["max_cos"])
    assert math.isnan(similarity["chance"])


@pytest.mark.parametrize("d, k1, k2", [(24, 3, 5), (16, 4, 4), (40, 8, 2)])
def test_the_chance_level_matches_simulation(d, k1, k2):
    rng = np.random.default_rng(d + k1 + k2)
    fixed = random_basis(rng, d, k1)
    trials = np.array([subspace_similarity(fixed, random_basis(rng, d, k2))["mean_cos2"]
                       for _ in range(3000)])
    expected = max(k1, k2) / d
    assert chance_mean_cos2(k1, k2, d) == expected
    assert subspace_similarity(fixed, random_basis(rng, d, k2))["chance"] == expected
    standard_error = trials.std() / math.sqrt(len(trials))
    assert abs(trials.mean() - expected) < 4 * standard_error
    # A wrong formula would be far outside that band: min/d and k1·k2/d² are not it.
    if k1 != k2:
        assert abs(trials.mean() - min(k1, k2) / d) > 10 * standard_error


# --- a comparison group -------------------------------------------------------------------------

GROUP = "toy/loso_speaker/tiny/lora/q_proj+v_proj"
D = 16


def run_id(rank: int, seed: int, fold: int, method: str = "lora") -> str:
    return f"toy/loso_speaker/tiny/{method}/q_proj+v_proj/r{rank}/seed{seed}/fold{fold}"


def with_b(rng, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, _ = random_factors(rng, D, D, b.shape[1])
    return a, b


@pytest.fixture
def group_runs(tmp_path):
    """Four runs of one group, with answers known by construction:
    - r4 seed0 fold2 has fold1's B (same column space), another A;
    - r8 seed0 fold1's B holds fold1's 4 columns plus 4 more (contains its column space);
    - r4 seed1 fold1 is random; in block 1 its v_proj B is zero (ΔW = 0)."""
    rng = np.random.default_rng(3)
    b4 = {(block, module): random_factors(rng, D, D, 4)[1]
          for block in range(2) for module in ("q_proj", "v_proj")}
    runs = {}

    def write(rank, seed, fold, bs):
        factors = {key: with_b(rng, b) for key, b in bs.items()}
        folder = write_adapter(tmp_path / f"r{rank}s{seed}f{fold}", factors, rank, 2.0 * rank)
        runs[run_id(rank, seed, fold)] = str(folder)

    write(4, 0, 1, b4)
    write(4, 0, 2, b4)
    write(8, 0, 1, {key: np.concatenate([b, random_factors(rng, D, D, 4)[1]], axis=1)
                    for key, b in b4.items()})
    random_bs = {key: random_factors(rng, D, D, 4)[1] for key in b4}
    random_bs[(1, "v_proj")] = np.zeros((D, 4))
    write(4, 1, 1, random_bs)
    return runs


def test_group_table_schema_what_differs_and_known_similarities(group_runs):
    table = group_subspaces(group_runs)
    assert list(table.columns) == ["dataset", "protocol", "model", "method", "targets", "run_1", "run_2",
                                   "differs", "block", "module", "d_out", "k1", "k2", "mean_cos2", "max_cos",
                                   "chance", "all_zero"]
    assert (table["method"] == "lora").all() and (table["targets"] == "q_proj+v_proj").all()
    assert len(table) == 6 * 4  # 6 pairs × 2 blocks × 2 modules
    pairs = table.drop_duplicates(["run_1", "run_2"]).set_index(["run_1", "run_2"])["differs"]
    assert pairs[(run_id(4, 0, 1), run_id(4, 0, 2))] == "fold"
    assert pairs[(run_id(4, 0, 1), run_id(4, 1, 1))] == "seed"
    assert pairs[(run_id(4, 0, 1), run_id(8, 0, 1))] == "rank"
    assert pairs[(run_id(4, 0, 2), run_id(4, 1, 1))] == "seed+fold"
    assert pairs[(run_id(4, 0, 2), run_id(8, 0, 1))] == "rank+fold"
    assert (table["run_1"] < table["run_2"]).all()

    def rows(first, second):
        return table[(table["run_1"] == first) & (table["run_2"] == second)]

    same = rows(run_id(4, 0, 1), run_id(4, 0, 2))  # the same column space
    np.testing.assert_allclose(same["mean_cos2"], 1.0)
    np.testing.assert_allclose(same["max_cos"], 1.0)
    assert (same["k1"] == 4).all() and (same["chance"] == 4 / D).all()
    contained = rows(run_id(4, 0, 1), run_id(8, 0, 1))  # a 4-dim subspace inside an 8-dim one
    np.testing.assert_allclose(contained["mean_cos2"], 1.0)
    assert (contained["k2"] == 8).all() and (contained["chance"] == 8 / D).all()
    random_pair = rows(run_id(4, 0, 1), run_id(4, 1, 1))
    valid = random_pair[~random_pair["all_zero"]]
    assert (valid["mean_cos2"] < 0.9).all()


def test_a_zero_update_gives_a_flagged_nan_row_not_a_crash(group_runs):
    table = group_subspaces(group_runs)
    zero = table[(table["block"] == 1) & (table["module"] == "v_proj")
                 & ((table["run_1"] == run_id(4, 1, 1)) | (table["run_2"] == run_id(4, 1, 1)))]
    assert len(zero) == 3 and zero["all_zero"].all()
    assert zero["mean_cos2"].isna().all() and zero["max_cos"].isna().all()
    zero_side_k = np.where(zero["run_1"] == run_id(4, 1, 1), zero["k1"], zero["k2"])
    assert (zero_side_k == 0).all()
    assert not table.loc[~table.index.isin(zero.index), "all_zero"].any()


def test_a_group_of_lora_init_runs_is_all_nan_and_flagged(tmp_path):
    rng = np.random.default_rng(4)
    runs = {}
    for fold in (1, 2):
        factors = {(0, module): (random_factors(rng, D, D, 4)[0], np.zeros((D, 4)))
                   for module in ("q_proj", "v_proj")}
        runs[run_id(4, 0, fold, "lora_init")] = str(write_adapter(tmp_path / f"f{fold}", factors, 4, 8.0))
    table = group_subspaces(runs)
    assert table["all_zero"].all() and table["mean_cos2"].isna().all()
    assert (table["method"] == "lora_init").all()


def test_group_checks(group_runs, tmp_path):
    one = dict(list(group_runs.items())[:1])
    with pytest.raises(InputError, match="needs two runs"):
        group_subspaces(one)
    mixed = dict(group_runs)
    other_targets = run_id(4, 0, 3).replace("q_proj+v_proj", "q_proj")
    mixed[other_targets] = group_runs[run_id(4, 0, 1)]
    with pytest.raises(InputError, match="2 comparison groups"):
        group_subspaces(mixed)
    with pytest.raises(InputError, match="not a run id"):
        group_subspaces({"toy/lora/r4": "x", run_id(4, 0, 1): group_runs[run_id(4, 0, 1)]})
    # The id says rank 8, the adapter has rank 4.
    wrong = {run_id(4, 0, 1): group_runs[run_id(4, 0, 1)], run_id(8, 0, 5): group_runs[run_id(4, 0, 2)]}
    with pytest.raises(InputError, match="r = 4, but run .*/r8/seed0/fold5 has rank 8"):
        group_subspaces(wrong)
    frozen = {f"toy/loso_speaker/tiny/frozen/none/r0/seed0/fold{f}": "x" for f in (1, 2)}
    with pytest.raises(InputError, match="no LoRA adapter"):
        group_subspaces(frozen)


def test_run_ids_and_pair_labels():
    run = Run.from_id(run_id(8, 1, 3))
    assert (run.rank, run.seed, run.fold, run.targets, run.id) == (8, 1, 3, "q_proj+v_proj", run_id(8, 1, 3))
    assert pair_label(run_id(4, 0, 1), run_id(4, 0, 2)) == "fold1 vs fold2"
    assert pair_label(run_id(8, 0, 1), run_id(16, 1, 1)) == "r8 seed0 vs r16 seed1"


# --- the entry point ----------------------------------------------------------------------------


def test_entry_point_writes_table_figure_and_provenance(group_runs, tmp_path):
    out = tmp_path / "out" / "subspaces.parquet"
    main([argument for rid, folder in group_runs.items() for argument in ("--run", f"{rid}={folder}")]
         + ["--out", str(out)])
    table = pd.read_parquet(out)
    assert list(table.columns[:5]) == ["dataset", "protocol", "model", "method", "targets"]
    assert len(table) == 24
    assert out.with_suffix(".png").is_file() and out.with_suffix(".svg").is_file()
    record = read_provenance(out)
    assert record["step"] == "subspaces" and record["group"] == GROUP and record["runs"] == group_runs


def test_entry_point_refuses_malformed_run_arguments(group_runs, tmp_path):
    out = tmp_path / "subspaces.parquet"
    first = next(iter(group_runs))
    with pytest.raises(InputError, match="expected RUN_ID=WEIGHTS_DIR"):
        main(["--run", first, "--run", f"{first}=x", "--out", str(out)])
    with pytest.raises(InputError, match="given twice"):
        main(["--run", f"{first}=a", "--run", f"{first}=b", "--out", str(out)])
    with pytest.raises(InputError, match="needs two runs"):
        main(["--run", f"{first}={group_runs[first]}", "--out", str(out)])
    assert not out.exists()


def test_help_names_the_inputs_and_takes_no_settings():
    text = help_text("workflow_scripts.analyses.subspaces")
    assert "RUN_ID=WEIGHTS_DIR" in text and "--spec" not in text