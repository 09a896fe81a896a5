"""Aggregation of the per-run analysis tables: known answers on small synthetic tables."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workflow_scripts.atomic import write_table
from workflow_scripts.errors import InputError
from workflow_scripts.provenance import read_provenance
from workflow_scripts.report.aggregate import (
    CONFIGURATION,
    PAIRED,
    RUN_COLUMNS,
    TABLES,
    aggregate,
    main,
    paired_differences,
    parse_expected_hash,
    read_tables,
)
from workflow_scripts.runs import Run

SEEDS, FOLDS, BLOCKS = (0, 1, 2), (1, 2), (0, 1, 2)
LORA = dict(method="lora", targets="q_proj+v_proj", rank=8)
FROZEN = dict(method="frozen", targets="none", rank=0)
# LoRA − frozen per (seed, fold), plus a per-block shift: no ties, no zeros, a different t per block.
BASE_DIFFERENCE = {(0, 1): 0.01, (0, 2): -0.02, (1, 1): 0.03, (1, 2): 0.005, (2, 1): 0.015, (2, 2): -0.007}
BLOCK_SHIFT = {0: 0.0, 1: 0.011, 2: 0.032}


def run_of(seed, fold, method="lora", targets="q_proj+v_proj", rank=8, dataset="demo"):
    return Run(dataset=dataset, protocol="loso_speaker", model="whisper-base", method=method, targets=targets,
               rank=rank, seed=seed, fold=fold)


def with_run(run: Run, rows: list[dict]) -> pd.DataFrame:
    fields = {"run": run.id, "dataset": run.dataset, "protocol": run.protocol, "model": run.model,
              "method": run.method, "targets": run.targets, "rank": run.rank, "seed": run.seed, "fold": run.fold}
    return pd.DataFrame([{**fields, **row} for row in rows])


def frozen_value(seed, fold, block):
    return 0.5 + 0.1 * block + 0.01 * seed + 0.001 * fold


def lora_value(seed, fold, block):
    return frozen_value(seed, fold, block) + BASE_DIFFERENCE[(seed, fold)] + BLOCK_SHIFT[block]


def contribution_run(run: Run, value) -> pd.DataFrame:
    rows = [{"block": block, "statistic": "ratio", "value": value(run.seed, run.fold, block), "clips": 10,
             "frames": 100 + run.seed} for block in BLOCKS]
    if run.method == "lora":  # a statistic only LoRA runs have: it has no frozen partner
        rows.append({"block": 0, "statistic": "lora_norm", "value": 1.0 + run.seed, "clips": 10, "frames": 100})
    return with_run(run, rows)


@pytest.fixture
def contribution():
    """2 configurations (LoRA r8, frozen) × 3 seeds × 2 folds."""
    frames = [contribution_run(run_of(seed, fold, **LORA), lora_value) for seed in SEEDS for fold in FOLDS]
    frames += [contribution_run(run_of(seed, fold, **FROZEN), frozen_value) for seed in SEEDS for fold in FOLDS]
    return pd.concat(frames, ignore_index=True)


def test_tables_cover_every_analysis():
    assert set(TABLES) == {"contribution", "contribution_difference", "logit_lens", "probes", "erasure", "spectra",
                           "spectra_comparison", "weight_spectra", "subspaces", "cka", "cka_lora_frozen",
                           "cka_seeds", "embeddings", "dynamics_representation", "dynamics_readouts",
                           "dynamics_weights", "dynamics_intruders"}
    assert tuple(CONFIGURATION) == ("dataset", "protocol", "model", "method", "targets", "rank")
    assert RUN_COLUMNS == ["run", "seed", "fold"]
    assert "k" in TABLES["spectra"].keys and "k" in TABLES["weight_spectra"].keys
    assert set(PAIRED) <= set(TABLES)


def fold_means(value, seeds, folds, block):
    return np.array([np.mean([value(seed, fold, block) for seed in seeds]) for fold in folds])


def test_aggregate_nests_seeds_in_folds_per_configuration(contribution):
    table = aggregate(contribution, "contribution")
    assert len(table) == 2 * 3 + 1  # 2 configurations × 3 blocks, and the LoRA-only statistic
    row = table[(table["method"] == "lora") & (table["block"] == 1) & (table["statistic"] == "ratio")].iloc[0]
    means = fold_means(lora_value, SEEDS, FOLDS, 1)
    assert (row["runs"], row["seeds"], row["folds"], row["units"], row["missing"]) == (6, 3, 2, 2, 0)
    assert row["mean"] == pytest.approx(means.mean())
    assert row["std"] == pytest.approx(np.std(means, ddof=1))
    within = [lora_value(seed, fold, 1) - means[i] for i, fold in enumerate(FOLDS) for seed in SEEDS]
    assert row["seed_std"] == pytest.approx(np.sqrt(np.sum(np.square(within)) / (2 * (3 - 1))))
    # two fold means: their range, called a range, not a 95 % interval
    assert row["interval"] == "range over folds"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((means.min(), means.max()))
    assert row["clips_mean"] == 10
    assert row["frames_mean"] == pytest.approx(101.0)  # seeds 0, 1, 2 over both folds
    assert list(table.columns[:8]) == [*CONFIGURATION, "block", "statistic"]


def test_aggregate_with_one_fold_spreads_over_seeds_and_counts_nan(contribution):
    part = contribution[(contribution["method"] == "frozen") & (contribution["fold"] == 1)].copy()
    part.loc[(part["block"] == 2) & (part["seed"] == 1), "value"] = np.nan
    table = aggregate(part, "contribution").set_index("block")
    assert table.loc[0, "runs"] == 3 and table.loc[0, "interval"] == "range over seeds (1 fold)"
    values = [frozen_value(seed, 1, 0) for seed in SEEDS]
    assert (table.loc[0, "ci_low"], table.loc[0, "ci_high"]) == pytest.approx((min(values), max(values)))
    assert table.loc[0, "seed_std"] == pytest.approx(np.std(values, ddof=1))
    assert (table.loc[2, "runs"], table.loc[2, "missing"], table.loc[2, "seeds"]) == (2, 1, 2)


def test_aggregate_is_deterministic_whatever_the_row_order(contribution):
    first = aggregate(contribution, "contribution")
    shuffled = contribution.sample(frac=1.0, random_state=4).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, aggregate(shuffled, "contribution"))
    # dropping a configuration leaves the other's rows as they were
    lora_only = aggregate(contribution[contribution["method"] == "lora"], "contribution")
    pd.testing.assert_frame_equal(lora_only, first[first["method"] == "lora"].reset_index(drop=True))


def cka_layer_run(run: Run) -> pd.DataFrame:
    rows = []
    for layer in (0, 1):
        for kernel, multiple in (("linear", np.nan), ("rbf", 0.5), ("rbf", 1.0)):
            value = 0.9 - 0.1 * layer + (0.0 if kernel == "linear" else multiple / 10) + 0.01 * run.seed
            rows.append({"pairing": "lora_vs_frozen", "layer_a": layer, "layer_b": layer, "kernel": kernel,
                         "rbf_multiple": multiple, "estimator": "unbiased", "value": value, "null_mean": 0.01,
                         "null_p95": 0.02 + 0.01 * run.fold, "permutations": 100, "n": 50,
                         "other_run": "x", "note": ""})
    return with_run(run, rows)


def test_nan_keys_group_as_their_own_value():
    table = pd.concat([cka_layer_run(run_of(seed, fold)) for seed in SEEDS for fold in FOLDS])
    result = aggregate(table, "cka_lora_frozen")
    assert len(result) == 2 * 3
    assert (result["runs"] == 6).all()
    linear = result[(result["kernel"] == "linear") & (result["layer_a"] == 1)].iloc[0]
    assert np.isnan(linear["rbf_multiple"])
    assert linear["mean"] == pytest.approx(0.8 + 0.01)  # seeds 0, 1, 2 average to 1
    assert linear["null_p95_mean"] == pytest.approx(0.035)
    rbf = result[(result["kernel"] == "rbf") & (result["rbf_multiple"] == 1.0) & (result["layer_a"] == 0)].iloc[0]
    assert rbf["mean"] == pytest.approx(0.9 + 0.1 + 0.01)


def test_spectra_scalars_and_curves_with_an_empty_k():
    frames = []
    for seed in SEEDS:
        run = run_of(seed, 1)
        rows = [{"block": 0, "module": "v_proj", "quantity": "a_out", "statistic": "cumulative_energy", "k": k,
                 "value": 0.5 * k + 0.01 * seed, "all_zero": False} for k in (1, 2)]
        rows.append({"block": 0, "module": "v_proj", "quantity": "a_out", "statistic": "k90", "k": pd.NA,
                     "value": 2.0 + seed, "all_zero": False})
        frame = with_run(run, rows)
        frame["k"] = frame["k"].astype("Int64")
        frames.append(frame)
    result = aggregate(pd.concat(frames, ignore_index=True), "spectra")
    assert len(result) == 3
    k90 = result[result["statistic"] == "k90"].iloc[0]
    assert pd.isna(k90["k"]) and k90["mean"] == pytest.approx(3.0) and k90["runs"] == 3
    curve = result[result["statistic"] == "cumulative_energy"].sort_values("k")
    assert curve["mean"].tolist() == pytest.approx([0.51, 1.01])
    assert (curve["all_zero_mean"] == 0).all()


def subspace_table(pairs) -> pd.DataFrame:
    rows = []
    for first, second in pairs:
        run_1, run_2 = sorted([first.id, second.id])
        differs = "+".join(f for f in ("rank", "seed", "fold") if getattr(first, f) != getattr(second, f))
        for block in (0, 1):
            value = 0.2 + 0.1 * block + 0.01 * (first.seed + second.seed)
            rows.append({"dataset": first.dataset, "protocol": first.protocol, "model": first.model,
                         "method": first.method, "targets": first.targets, "run_1": run_1, "run_2": run_2,
                         "differs": differs, "block": block, "module": "v_proj", "d_out": 512,
                         "k1": first.rank, "k2": second.rank, "mean_cos2": value, "max_cos": 2 * value,
                         "chance": max(first.rank, second.rank) / 512, "all_zero": False})
    return pd.DataFrame(rows)


def test_subspaces_aggregate_pairs_per_measure_and_rank():
    pairs = [(run_of(0, 1), run_of(1, 1)), (run_of(0, 1), run_of(2, 1)), (run_of(1, 1), run_of(2, 1)),
             (run_of(0, 1, rank=4), run_of(1, 1, rank=4)), (run_of(0, 1, rank=4), run_of(0, 1))]
    result = aggregate(subspace_table(pairs), "subspaces")
    assert "rank" not in result.columns
    seed_r8 = result[(result["differs"] == "seed") & (result["rank_1"] == 8) & (result["block"] == 1)]
    assert set(seed_r8["measure"]) == {"mean_cos2", "max_cos"}
    cos2 = seed_r8.set_index("measure").loc["mean_cos2"]
    assert (cos2["runs"], cos2["seeds"], cos2["folds"]) == (3, 3, 1)  # 3 pairs over seeds 0, 1, 2
    assert cos2["mean"] == pytest.approx(0.3 + 0.01 * (1 + 2 + 3) / 3)
    assert cos2["chance_mean"] == pytest.approx(8 / 512)
    assert seed_r8.set_index("measure").loc["max_cos", "mean"] == pytest.approx(2 * cos2["mean"])
    seed_r4 = result[(result["differs"] == "seed") & (result["rank_1"] == 4)]
    assert (seed_r4["runs"] == 1).all() and (seed_r4["interval"] == "none").all()
    rank = result[result["differs"] == "rank"]
    assert set(zip(rank["rank_1"], rank["rank_2"])) == {(4, 8)}


SIX_FOLDS = (1, 2, 3, 4, 5, 6)
# A fold-level LoRA − frozen difference (no ties, no zeros), and a seed offset that averages out.
FOLD_DIFFERENCE = {1: 0.01, 2: -0.02, 3: 0.03, 4: 0.005, 5: 0.015, 6: 0.042}


def six_fold_lora_value(seed, fold, block):
    return frozen_value(seed, fold, block) + FOLD_DIFFERENCE[fold] + BLOCK_SHIFT[block] + (0.004 if seed else -0.004)


@pytest.fixture
def six_folds():
    """LoRA r8 and frozen × 2 seeds × 6 folds."""
    frames = [contribution_run(run_of(seed, fold, **LORA), six_fold_lora_value) for seed in (0, 1) for fold in SIX_FOLDS]
    frames += [contribution_run(run_of(seed, fold, **FROZEN), frozen_value) for seed in (0, 1) for fold in SIX_FOLDS]
    return pd.concat(frames, ignore_index=True)


def test_paired_differences_test_the_fold_level_differences_with_holm_across_blocks(six_folds):
    paired = paired_differences(six_folds, "contribution")
    assert set(paired["statistic"]) == {"ratio"}  # the LoRA-only statistic has no frozen partner
    assert len(paired) == 3
    assert (paired["method"] == "lora").all() and (paired["rank"] == 8).all()
    for block in BLOCKS:
        row = paired[paired["block"] == block].iloc[0]
        per_fold = (fold_means(six_fold_lora_value, (0, 1), SIX_FOLDS, block)
                    - fold_means(frozen_value, (0, 1), SIX_FOLDS, block))
        assert per_fold == pytest.approx([FOLD_DIFFERENCE[fold] + BLOCK_SHIFT[block] for fold in SIX_FOLDS])
        assert (row["pairs"], row["seeds"], row["folds"], row["units"]) == (12, 2, 6, 6)
        assert row["mean_difference"] == pytest.approx(per_fold.mean())
        assert row["lora_mean"] - row["frozen_mean"] == pytest.approx(row["mean_difference"])
        # within every fold the seeds' differences are the fold's ∓ 0.004: pooled sd 0.008 / √2
        assert row["seed_std"] == pytest.approx(0.008 / np.sqrt(2))
        t = stats.ttest_1samp(per_fold, 0.0)  # over 6 fold-level differences, not 12 runs
        assert (row["t_statistic"], row["t_p"]) == pytest.approx((t.statistic, t.pvalue))
        w = stats.wilcoxon(per_fold)
        assert (row["wilcoxon_statistic"], row["wilcoxon_p"]) == pytest.approx((w.statistic, w.pvalue))
        half = stats.t.ppf(0.975, 5) * np.std(per_fold, ddof=1) / np.sqrt(6)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((per_fold.mean() - half, per_fold.mean() + half))
        assert row["interval"] == "t95 over folds" and row["test_note"] == ""
    # Holm by hand over the three blocks' t p-values
    p = paired.sort_values("block")["t_p"].to_numpy()
    order = np.argsort(p)
    expected = np.empty(3)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (3 - position) * p[index]))
        expected[index] = running
    assert paired.sort_values("block")["t_p_holm"].to_numpy() == pytest.approx(expected)
    assert (paired["t_p_holm"] >= paired["t_p"]).all()


def test_paired_differences_families_and_small_samples(six_folds):
    five = six_folds[(six_folds["fold"] < 6) & (six_folds["statistic"] == "ratio")]  # 5 folds per block
    twice = five.copy()
    twice["statistic"] = "cosine"  # a second quantity: its own Holm family
    twice["value"] = twice["value"] * 0.5
    paired = paired_differences(pd.concat([five, twice], ignore_index=True), "contribution")
    assert len(paired) == 6
    assert (paired["units"] == 5).all() and (paired["interval"] == "t95 over folds").all()
    assert (paired["test_note"] == "fewer than 6 units for Wilcoxon").all()
    assert paired["wilcoxon_p"].isna().all() and paired["wilcoxon_p_holm"].isna().all()
    for _, family in paired.groupby("statistic"):
        family = family.sort_values("block")
        assert family["t_p_holm"].to_numpy() == pytest.approx(
            np.minimum(1.0, np.maximum.accumulate(np.sort(family["t_p"].to_numpy()) * [3, 2, 1]))[
                np.argsort(np.argsort(family["t_p"].to_numpy()))])
    few = paired_differences(six_folds[six_folds["fold"] < 3], "contribution")  # 2 folds: a range, no test
    assert (few["interval"] == "range over folds").all() and few["t_p"].isna().all()
    assert (few["test_note"] == "2 units: no test below 5").all()
    one = paired_differences(six_folds[(six_folds["seed"] == 0) & (six_folds["fold"] == 1)], "contribution")
    assert (one["test_note"] == "1 unit: no test below 5").all() and one["t_p"].isna().all()
    one_fold = paired_differences(six_folds[six_folds["fold"] == 1], "contribution")
    assert (one_fold["interval"] == "range over seeds (1 fold)").all()


SIMULATED_GRIDS = 2000


def simulated_tables(rng: np.random.Generator, folds: int = 5, seeds: int = 3) -> pd.DataFrame:
    """SIMULATED_GRIDS independent nested grids in one contribution table, one per block: frozen
    values with a fold effect (sd 1) and seed noise (sd 0.3) around 0.5, and LoRA values whose
    difference has its own fold effect and seed noise around 0 (the null)."""
    frames = []
    frozen_fold = rng.normal(0, 1.0, size=(folds, SIMULATED_GRIDS))
    difference_fold = rng.normal(0, 1.0, size=(folds, SIMULATED_GRIDS))
    blocks = np.arange(SIMULATED_GRIDS)
    for fold in range(folds):
        for seed in range(seeds):
            frozen = 0.5 + frozen_fold[fold] + rng.normal(0, 0.3, SIMULATED_GRIDS)
            lora = frozen + difference_fold[fold] + rng.normal(0, 0.3, SIMULATED_GRIDS)
            for fields, values in ((FROZEN, frozen), (LORA, lora)):
                run = run_of(seed, fold + 1, **fields)
                frames.append(with_run(run, [{"block": b, "statistic": "ratio", "value": v, "clips": 1, "frames": 1}
                                             for b, v in zip(blocks, values)]))
    return pd.concat(frames, ignore_index=True)


def test_simulated_nested_grids_cover_the_truth_and_keep_the_false_positive_rate():
    table = simulated_tables(np.random.default_rng(2026))
    summary = aggregate(table, "contribution")
    frozen = summary[summary["method"] == "frozen"]
    assert len(frozen) == SIMULATED_GRIDS and (frozen["interval"] == "t95 over folds").all()
    coverage = ((frozen["ci_low"] <= 0.5) & (0.5 <= frozen["ci_high"])).mean()
    assert 0.93 <= coverage <= 0.97, coverage
    paired = paired_differences(table, "contribution")
    assert len(paired) == SIMULATED_GRIDS and paired["t_p"].notna().all()
    false_positives = (paired["t_p"] < 0.05).mean()
    assert false_positives <= 0.06, false_positives
    covered = ((paired["ci_low"] <= 0) & (0 <= paired["ci_high"])).mean()
    assert 0.93 <= covered <= 0.97, covered


def test_paired_differences_without_frozen_runs_is_empty(contribution):
    paired = paired_differences(contribution[contribution["method"] == "lora"], "contribution")
    assert paired.empty
    assert {"pairs", "mean_difference", "t_p_holm", "wilcoxon_p_holm", "test_note"} <= set(paired.columns)
    with pytest.raises(InputError, match="paired"):
        paired_differences(contribution, "spectra")


# --- files -------------------------------------------------------------------------------------


def write_run_tables(folder, frame, config_hash="h1", settings=None):
    """One Parquet per run (as the analyses write them), with provenance."""
    paths = []
    for run_id, part in frame.groupby("run", sort=True):
        path = folder / run_id / "table.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(path, part.reset_index(drop=True),
                    provenance={"step": "contribution", "config_hash": config_hash,
                                "settings": settings or {"split": "test"}})
        paths.append(str(path))
    return paths


def test_read_tables_checks_columns(tmp_path, contribution):
    paths = write_run_tables(tmp_path, contribution)
    table = read_tables(paths, "contribution", expected_hash="h1", expected_runs=sorted(contribution["run"].unique()))
    assert len(table) == len(contribution)
    broken = tmp_path / "broken.parquet"
    write_table(broken, contribution.drop(columns=["statistic"]).head(3), provenance={"config_hash": "h1"})
    with pytest.raises(InputError, match=r"broken\.parquet.*statistic"):
        read_tables([*paths, str(broken)], "contribution")
    with pytest.raises(InputError, match="no such"):
        read_tables([str(tmp_path / "absent.parquet")], "contribution")


def test_read_tables_rejects_a_table_from_other_settings(tmp_path, contribution):
    paths = write_run_tables(tmp_path / "new", contribution[contribution["seed"] > 0])
    old = write_run_tables(tmp_path / "old", contribution[contribution["seed"] == 0], config_hash="h0",
                           settings={"split": "validation"})
    with pytest.raises(InputError) as error:
        read_tables(paths + old, "contribution", expected_hash="h1")
    message = str(error.value)
    assert old[0] in message and "h0" in message and "h1" in message and "validation" in message
    assert "rerun the analysis (a table from an older config?)" in message


def test_the_expected_hash_can_be_per_dataset(tmp_path, contribution):
    paths = write_run_tables(tmp_path, contribution)
    dataset = contribution["dataset"].iloc[0]
    assert len(read_tables(paths, "contribution", expected_hash={dataset: "h1", "other": "h9"})) == len(contribution)
    with pytest.raises(InputError, match="hash to h9"):
        read_tables(paths, "contribution", expected_hash={dataset: "h9"})
    with pytest.raises(InputError, match=r"settings are known for \['other'\]"):
        read_tables(paths, "contribution", expected_hash={"other": "h1"})
    assert parse_expected_hash(["abc"]) == "abc"
    assert parse_expected_hash(["a=1", "b=2"]) == {"a": "1", "b": "2"}
    with pytest.raises(InputError, match="DATASET=HASH"):
        parse_expected_hash(["a=1", "b"])


def test_read_tables_checks_the_runs(tmp_path, contribution):
    paths = write_run_tables(tmp_path, contribution)
    runs = sorted(contribution["run"].unique())
    absent = run_of(5, 1).id
    with pytest.raises(InputError, match=f"(?s)contribution: no table.*{re.escape(absent)}"):
        read_tables(paths, "contribution", expected_runs=[*runs, absent])
    with pytest.raises(InputError) as error:
        read_tables(paths, "contribution", expected_runs=runs[1:])
    assert runs[0] in str(error.value) and paths[0] in str(error.value)
    with pytest.raises(InputError, match="holds too"):
        read_tables([*paths, paths[0]], "contribution")


# --- entry point ---------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, contribution):
    paths = write_run_tables(tmp_path / "tables", contribution)
    out, paired_out = tmp_path / "agg" / "contribution.parquet", tmp_path / "agg" / "contribution.paired.parquet"
    main(["--analysis", "contribution", "--tables", *paths, "--out", str(out), "--paired-out", str(paired_out),
          "--expected-hash", "h1", "--expected-runs", *sorted(contribution["run"].unique())])
    pd.testing.assert_frame_equal(pd.read_parquet(out), aggregate(contribution, "contribution"), check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(paired_out), paired_differences(contribution, "contribution"),
                                  check_dtype=False)
    record = read_provenance(out)
    assert record["step"] == "aggregate" and record["settings"]["analysis"] == "contribution"
    assert {item["config_hash"] for item in record["inputs"]} == {"h1"}
    assert read_provenance(paired_out)["step"] == "aggregate_paired"


def test_cli_writes_nothing_on_bad_input(tmp_path, contribution):
    paths = write_run_tables(tmp_path / "tables", contribution)
    out, paired_out = tmp_path / "agg" / "a.parquet", tmp_path / "agg" / "p.parquet"
    arguments = ["--analysis", "contribution", "--tables", *paths, "--out", str(out), "--paired-out", str(paired_out)]
    with pytest.raises(InputError, match="older config"):
        main([*arguments, "--expected-hash", "other"])
    with pytest.raises(InputError, match="not in the expected grid"):
        main([*arguments, "--expected-runs", run_of(0, 1).id])  # every other run is outside the grid
    with pytest.raises(InputError, match="--paired-out"):
        main(["--analysis", "spectra", "--tables", *paths, "--out", str(out), "--paired-out", str(paired_out)])
    assert not out.exists() and not paired_out.exists()
    assert not (tmp_path / "agg").exists() or not any((tmp_path / "agg").iterdir())


def test_cli_help():
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0


def test_embeddings_group_plays_the_run(tmp_path):
    rows = []
    for seed in (0, 1):
        group = f"demo/loso_speaker/whisper-base/lora/q_proj+v_proj/seed{seed}/fold1"
        for rank in (4, 8):
            rows.append({"group": group, "dataset": "demo", "protocol": "loso_speaker", "model": "whisper-base",
                         "method": "lora", "targets": "q_proj+v_proj", "seed": seed, "fold": 1, "rank": rank,
                         "block": 0, "module": "v_proj", "space": "features", "statistic": "knn_uar",
                         "value": 0.3 + 0.01 * rank + 0.1 * seed, "knn_cv": "leave-one-out (one speaker)",
                         "clips": 20})
    frame = pd.DataFrame(rows)
    path = tmp_path / "e.parquet"
    write_table(path, frame, provenance={"config_hash": "e"})
    groups = sorted(frame["group"].unique())
    table = read_tables([str(path)], "embeddings", expected_hash="e", expected_runs=groups)
    result = aggregate(table, "embeddings").set_index("rank")
    assert result.loc[8, "mean"] == pytest.approx(0.38 + 0.05)
    assert (result["runs"] == 2).all() and (result["seeds"] == 2).all()
    with pytest.raises(InputError, match="fold1"):
        read_tables([str(path)], "embeddings", expected_runs=groups[:1])
    json.dumps(result.reset_index().to_dict("records"), default=str)  # plain values, nothing exotic
