"""Nested summaries over seeds × folds, Holm and the paired tests: known answers computed by hand
or by scipy, and the coverage and false-positive rate of the intervals and tests by simulation."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workflow_scripts.report.statistics import (
    fold_units,
    grouped_paired_tests,
    holm,
    nested_summaries,
    paired_tests,
    summarize,
)


def test_t_interval_over_five_or_more_folds():
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # no fold labels: each value its own fold
    # mean 3.5, sample variance 17.5 / 5 = 3.5, t(0.975, df 5) = 2.5705818366147395
    half = 2.5705818366147395 * math.sqrt(3.5) / math.sqrt(6)
    assert summary["interval"] == "t95 over folds"
    assert (summary["runs"], summary["units"], summary["folds"], summary["missing"]) == (6, 6, 6, 0)
    assert summary["mean"] == pytest.approx(3.5)
    assert summary["std"] == pytest.approx(math.sqrt(3.5))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((3.5 - half, 3.5 + half))
    assert math.isnan(summary["seed_std"])  # no fold has two seeds
    assert stats.t.ppf(0.975, 5) == pytest.approx(2.5705818366147395)


def test_seeds_are_averaged_within_folds_before_the_interval():
    # 5 folds × 2 seeds. Fold means 1.5, 2.5, 2.0, 4.0, 3.0 (mean 2.6, sample variance 3.7 / 4 = 0.925);
    # within-fold squares 0.5 each (pairs 1 apart), 5 degrees: seed_std = sqrt(2.5 / 5).
    values = [1, 2, 2, 3, 1.5, 2.5, 3.5, 4.5, 2.5, 3.5]
    folds = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    summary = summarize(values, folds)
    half = stats.t.ppf(0.975, 4) * math.sqrt(0.925) / math.sqrt(5)
    assert (summary["runs"], summary["units"], summary["folds"]) == (10, 5, 5)
    assert summary["mean"] == pytest.approx(2.6)
    assert summary["std"] == pytest.approx(math.sqrt(0.925))
    assert summary["seed_std"] == pytest.approx(math.sqrt(0.5))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((2.6 - half, 2.6 + half))
    assert summary["interval"] == "t95 over folds"
    # Pooling the 10 runs as one sample would give a narrower interval: the flaw this replaces.
    pooled_half = stats.t.ppf(0.975, 9) * np.std(values, ddof=1) / math.sqrt(10)
    assert pooled_half < half


def test_seed_std_pools_within_fold_variances_by_their_degrees_of_freedom():
    # Fold 1: 3 seeds (variance 0.0016, 2 degrees); fold 2: 2 seeds (variance 0.0008, 1 degree).
    summary = summarize([0.70, 0.74, 0.78, 0.70, 0.74], [1, 1, 1, 2, 2])
    assert summary["seed_std"] == pytest.approx(math.sqrt((2 * 0.0016 + 0.0008) / 3))
    assert summary["mean"] == pytest.approx((0.74 + 0.72) / 2)  # every fold weighs the same


@pytest.mark.parametrize("count", [2, 3, 4])
def test_two_to_four_fold_means_give_their_range_not_an_interval(count):
    values = [3.0, 1.0, 7.0, 2.0][:count]
    summary = summarize(values)
    assert summary["interval"] == "range over folds"
    assert (summary["ci_low"], summary["ci_high"]) == (min(values), max(values))


def test_one_fold_spreads_over_its_seeds_and_says_so():
    few = summarize([0.5, 0.7], folds=[3, 3])
    assert few["interval"] == "range over seeds (1 fold)"
    assert (few["units"], few["folds"], few["ci_low"], few["ci_high"]) == (2, 1, 0.5, 0.7)
    assert few["seed_std"] == pytest.approx(few["std"])
    many = summarize([0.1, 0.2, 0.3, 0.4, 0.5], folds=[1] * 5)
    assert many["interval"] == "t95 over seeds (1 fold)"
    half = stats.t.ppf(0.975, 4) * np.std([0.1, 0.2, 0.3, 0.4, 0.5], ddof=1) / math.sqrt(5)
    assert (many["ci_low"], many["ci_high"]) == pytest.approx((0.3 - half, 0.3 + half))


def test_another_confidence_bounds_and_no_clipping_by_default():
    values = [-0.4, 0.1, 0.3, 1.2, 0.9]
    summary = summarize(values, confidence=0.9)
    half = stats.t.ppf(0.95, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert summary["interval"] == "t90 over folds"
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert summary["ci_low"] < 0  # values are not proportions: nothing is clipped
    clipped = summarize(values, confidence=0.9, bounds=(0.0, 1.0))
    assert (clipped["ci_low"], clipped["ci_high"]) == (0.0, 1.0)  # both ends beyond [0, 1] before clipping


def test_one_run_has_no_interval_and_no_runs_no_mean():
    one = summarize([0.42])
    assert (one["runs"], one["mean"], one["interval"]) == (1, 0.42, "none")
    assert all(math.isnan(one[key]) for key in ("std", "ci_low", "ci_high", "seed_std"))
    none = summarize([np.nan, np.nan])
    assert (none["runs"], none["missing"], none["interval"]) == (0, 2, "none")
    assert math.isnan(none["mean"])


def test_nan_values_are_dropped_and_counted():
    summary = summarize([1.0, np.nan, 3.0, np.nan, 5.0])
    assert (summary["runs"], summary["missing"]) == (3, 2)
    assert summary["mean"] == pytest.approx(3.0)
    assert summary["std"] == pytest.approx(2.0)


@pytest.mark.parametrize("runs", [3, 6])
def test_constant_sample_has_a_point_interval(runs):
    summary = summarize([0.1] * runs)
    assert summary["std"] == 0.0
    assert summary["mean"] == summary["ci_low"] == summary["ci_high"] == 0.1


def test_nested_summaries_equal_summarize_per_group():
    rng = np.random.default_rng(3)
    sizes = [1, 2, 3, 4, 5, 9, 12, 0]
    groups = np.concatenate([np.full(size, code) for code, size in enumerate(sizes)])
    folds = np.concatenate([np.arange(size) % 3 if code == 6 else np.arange(size) for code, size in enumerate(sizes)])
    values = rng.normal(size=groups.size)
    values[[2, 12]] = np.nan
    shuffle = rng.permutation(groups.size)
    table = nested_summaries(groups[shuffle], folds[shuffle], values[shuffle], len(sizes))
    assert len(table) == len(sizes)
    for code in range(len(sizes)):
        expected = summarize(values[groups == code], folds[groups == code])
        row = table.iloc[code]
        assert row["interval"] == expected["interval"]
        for key in ("runs", "units", "folds", "missing", "mean", "std", "seed_std", "ci_low", "ci_high"):
            assert row[key] == pytest.approx(expected[key], nan_ok=True, abs=1e-12)


def test_holm_hand_examples():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.02, 0.5]) == pytest.approx([0.04, 0.5])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 · 0.5, capped at 1
    adjusted = holm([0.01, np.nan, 0.04, 0.03])  # NaN is not a test: m = 3
    assert np.isnan(adjusted[1])
    assert adjusted[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([np.nan])).all()
    assert holm([]).size == 0


def test_paired_tests_against_scipy():
    lora = np.array([0.61, 0.64, 0.70, 0.58, 0.66, 0.73, 0.69])
    frozen = np.array([0.56, 0.62, 0.71, 0.49, 0.59, 0.62, 0.66])  # differences without ties or zeros
    result = paired_tests(lora - frozen)
    t = stats.ttest_rel(lora, frozen)
    w = stats.wilcoxon(lora - frozen)
    assert (result["t_statistic"], result["t_p"]) == pytest.approx((t.statistic, t.pvalue))
    assert (result["wilcoxon_statistic"], result["wilcoxon_p"]) == pytest.approx((w.statistic, w.pvalue))
    assert result["wilcoxon_statistic"] == 1.0  # one negative difference (-0.01), the smallest rank
    assert result["test_note"] == ""


def test_paired_tests_say_why_a_test_is_missing():
    one = paired_tests([0.1, np.nan])
    assert one["test_note"] == "1 unit: no test below 5"
    assert np.isnan(one["t_p"]) and np.isnan(one["wilcoxon_p"])
    few = paired_tests([0.1, 0.2, -0.05, 0.3])
    assert few["test_note"] == "4 units: no test below 5" and np.isnan(few["t_p"])
    five = paired_tests([0.1, 0.2, -0.05, 0.3, 0.15])
    assert five["test_note"] == "fewer than 6 units for Wilcoxon"
    assert not np.isnan(five["t_p"]) and np.isnan(five["wilcoxon_p"])
    equal = paired_tests([0.2] * 6)
    assert np.isnan(equal["t_p"])
    assert "all differences equal" in equal["test_note"]
    assert 0 < equal["wilcoxon_p"] < 0.05  # every sign positive: Wilcoxon still has something to say
    zero = paired_tests([0.0] * 6)
    assert np.isnan(zero["wilcoxon_p"]) and "all differences zero" in zero["test_note"]


def test_fold_units_are_fold_means_or_the_seeds_of_a_single_fold():
    units, counts = fold_units(np.array([0, 0, 0, 0, 1, 1]), [1, 1, 2, 2, 7, 7], np.array([1.0, 3, 5, 7, 0.5, 0.7]))
    assert sorted(units[units["group"] == 0]["value"]) == [2.0, 6.0]
    assert sorted(units[units["group"] == 1]["value"]) == [0.5, 0.7]
    assert counts.loc[0, "folds"] == 2 and counts.loc[1, "folds"] == 1
    assert counts.loc[0, "seed_std"] == pytest.approx(math.sqrt(2.0))


# ---------------------------------------------------------------------------------------------
# Simulation: a nested grid with a fold effect, a seed effect and known truth.

SIMULATIONS, FOLDS, SEEDS = 4000, 5, 3
FOLD_SD, SEED_SD = 1.0, 0.3


def simulated_grids(seed: int, truth: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group code, fold and value of SIMULATIONS independent 5-fold × 3-seed grids."""
    rng = np.random.default_rng(seed)
    fold_effect = rng.normal(0, FOLD_SD, size=(SIMULATIONS, FOLDS, 1))
    seed_effect = rng.normal(0, SEED_SD, size=(SIMULATIONS, FOLDS, SEEDS))
    values = truth + fold_effect + seed_effect
    groups = np.repeat(np.arange(SIMULATIONS), FOLDS * SEEDS)
    folds = np.tile(np.repeat(np.arange(FOLDS), SEEDS), SIMULATIONS)
    return groups, folds, values.ravel()


def test_the_interval_over_fold_means_covers_the_truth_95_percent_of_the_time():
    groups, folds, values = simulated_grids(seed=20261207, truth=0.7)
    table = nested_summaries(groups, folds, values, SIMULATIONS)
    assert (table["interval"] == "t95 over folds").all()
    coverage = ((table["ci_low"] <= 0.7) & (0.7 <= table["ci_high"])).mean()
    assert 0.93 <= coverage <= 0.97, coverage
    # Every run as its own sample (the old pooling) covers far less often.
    pooled = nested_summaries(groups, np.arange(values.size), values, SIMULATIONS)
    assert ((pooled["ci_low"] <= 0.7) & (0.7 <= pooled["ci_high"])).mean() < 0.8


def test_the_paired_test_on_fold_level_differences_keeps_its_false_positive_rate():
    # LoRA − frozen differences under the null: a fold effect of the difference, seed noise, mean 0.
    groups, folds, differences = simulated_grids(seed=7)
    units, _ = fold_units(groups, folds, differences)
    tests = grouped_paired_tests(units, SIMULATIONS)
    assert tests["t_p"].notna().all()
    false_positives = (tests["t_p"] < 0.05).mean()
    assert false_positives <= 0.06, false_positives
    pooled_units = pd.DataFrame({"group": groups, "value": differences})
    pooled = grouped_paired_tests(pooled_units, SIMULATIONS)
    assert (pooled["t_p"] < 0.05).mean() > 0.15  # the old, pooled test rejects a true null far too often

