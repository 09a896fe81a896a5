"""Summaries over runs, Holm and the paired tests: known answers computed by hand or by scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from workflow_scripts.report.statistics import (
    BOOTSTRAP_RESAMPLES,
    grouped_summaries,
    holm,
    paired_tests,
    summarize,
)


def test_t_interval_from_five_runs_on():
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # mean 3.5, sample variance 17.5 / 5 = 3.5, t(0.975, df 5) = 2.5705818366147395
    half = 2.5705818366147395 * math.sqrt(3.5) / math.sqrt(6)
    assert summary["interval"] == "t"
    assert (summary["runs"], summary["missing"]) == (6, 0)
    assert summary["mean"] == pytest.approx(3.5)
    assert summary["std"] == pytest.approx(math.sqrt(3.5))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((3.5 - half, 3.5 + half))
    assert stats.t.ppf(0.975, 5) == pytest.approx(2.5705818366147395)


def test_t_interval_at_another_confidence_and_not_clipped():
    values = [-0.4, 0.1, 0.3, 1.2, 0.9]
    summary = summarize(values, confidence=0.9)
    half = stats.t.ppf(0.95, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert summary["ci_low"] < 0  # values are not proportions: nothing is clipped


def test_bootstrap_of_two_runs_spans_them():
    # Resample means of (1, 3) are 1, 2, 3 with chances 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # quantiles of 10,000 of them are 1 and 3.
    summary = summarize([3.0, 1.0])
    assert summary["interval"] == "bootstrap"
    assert (summary["ci_low"], summary["ci_high"]) == (1.0, 3.0)
    assert summary["mean"] == 2.0
    assert summary["std"] == pytest.approx(math.sqrt(2.0))


def test_bootstrap_matches_the_direct_percentile_bootstrap_and_is_reproducible():
    values = [0.9, 0.2, 0.5, 0.45]
    summary = summarize(values, seed=7)
    ordered = np.sort(values)
    draws = np.random.default_rng(7).integers(0, 4, size=(BOOTSTRAP_RESAMPLES, 4))
    low, high = np.quantile(ordered[draws].mean(axis=1), [0.025, 0.975])
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert min(values) <= summary["ci_low"] < summary["mean"] < summary["ci_high"] <= max(values)
    assert summarize(values, seed=7) == summary
    assert summarize(values[::-1], seed=7) == summary  # the runs' order does not matter


def test_one_run_has_no_interval_and_no_runs_no_mean():
    one = summarize([0.42])
    assert (one["runs"], one["mean"], one["interval"]) == (1, 0.42, "none")
    assert all(math.isnan(one[key]) for key in ("std", "ci_low", "ci_high"))
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


def test_grouped_summaries_equal_summarize_per_group():
    rng = np.random.default_rng(3)
    sizes = [1, 2, 3, 4, 5, 9, 0]
    groups = np.concatenate([np.full(size, code) for code, size in enumerate(sizes)])
    values = rng.normal(size=groups.size)
    values[[2, 12]] = np.nan
    shuffle = rng.permutation(groups.size)
    table = grouped_summaries(groups[shuffle], values[shuffle], len(sizes), seed=11)
    assert len(table) == len(sizes)
    for code in range(len(sizes)):
        expected = summarize(values[groups == code], seed=11)
        row = table.iloc[code]
        assert row["interval"] == expected["interval"]
        for key in ("runs", "missing", "mean", "std", "ci_low", "ci_high"):
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
    assert one["test_note"] == "1 pair"
    assert np.isnan(one["t_p"]) and np.isnan(one["wilcoxon_p"])
    few = paired_tests([0.1, 0.2, -0.05])
    assert few["test_note"] == "fewer than 6 pairs for Wilcoxon"
    assert not np.isnan(few["t_p"]) and np.isnan(few["wilcoxon_p"])
    equal = paired_tests([0.2] * 6)
    assert np.isnan(equal["t_p"])
    assert "all differences equal" in equal["test_note"]
    assert 0 < equal["wilcoxon_p"] < 0.05  # every sign positive: Wilcoxon still has something to say
    zero = paired_tests([0.0] * 6)
    assert np.isnan(zero["wilcoxon_p"]) and "all differences zero" in zero["test_note"]
