"""Summaries over runs and paired tests: the statistics behind the aggregated report tables.

Pure numpy/scipy, no file input; :mod:`workflow_scripts.report.aggregate` applies them to the
analysis tables.

**Summary of one sample** (the values of one quantity over the runs of one configuration):
NaN values are dropped first and counted (``missing``); of the ``runs`` values left:

* ``mean``, and ``std`` the sample standard deviation (ddof 1; NaN with fewer than 2 runs);
* the interval of the mean at ``confidence`` (95 % by default), by one rule:

  - ``runs >= BOOTSTRAP_BELOW`` (5): the t-interval ``mean ± t(1 − α/2, runs − 1) · std / √runs``
    (``interval = "t"``);
  - ``2 <= runs < BOOTSTRAP_BELOW``: the percentile bootstrap of the mean over the runs
    (``interval = "bootstrap"``): :data:`BOOTSTRAP_RESAMPLES` resamples of the runs with
    replacement, drawn by ``numpy.random.default_rng(seed)`` as an index matrix
    ``integers(0, runs, (B, runs))`` applied to the values sorted ascending (so the answer does
    not depend on the order the runs come in), and the α/2 and 1 − α/2 quantiles of the
    resample means (numpy's default linear interpolation). With so few runs a t-interval leans
    entirely on normality; the bootstrap interval instead stays within the observed range, and
    is honest about being narrow only where the runs agree (it is known to undercover at such
    sizes; the ``interval`` column says which kind each row has);
  - ``runs == 1``: no interval (``interval = "none"``, NaN ends); ``runs == 0`` likewise, with a
    NaN mean.

  A constant sample has ``std = 0`` and ``ci_low = ci_high = mean`` (exactly). Intervals are
  never clipped: the values are not all proportions.

:func:`grouped_summaries` computes the same for many groups at once (vectorised: the bootstrap
of all groups with the same run count shares one index matrix, so every group's interval is
exactly what :func:`summarize` gives for its values, whatever else is in the table).

**Paired tests** on differences d_i = LoRA − frozen of matched runs (:func:`paired_tests`):
the paired t-test (``scipy.stats.ttest_1samp(d, 0)``, identical to ``ttest_rel``; NaN with
fewer than 2 pairs or when all differences are equal, where the statistic is undefined) and the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon(d)``, two-sided, zeros dropped), only with at
least :data:`WILCOXON_MIN_PAIRS` (6) pairs: with n pairs the smallest exact two-sided p is
2 / 2ⁿ, which is 0.0625 for n = 5, so below 6 pairs the test could never reject at 0.05.

**Holm** (:func:`holm`): the step-down adjustment of a family of p-values (here: one quantity
across layers): sort the m p-values ascending, p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j)).
NaN p-values stay NaN and are not counted in m.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
#: From this many runs on the interval is the t-interval; below it (and from 2 runs), the bootstrap.
BOOTSTRAP_BELOW = 5
BOOTSTRAP_RESAMPLES = 10_000
#: The Wilcoxon signed-rank test needs this many pairs before its exact p can go below 0.05.
WILCOXON_MIN_PAIRS = 6

T_INTERVAL = "t"
BOOTSTRAP_INTERVAL = "bootstrap"
NO_INTERVAL = "none"

SUMMARY_COLUMNS = ["runs", "missing", "mean", "std", "ci_low", "ci_high", "interval"]
TEST_COLUMNS = ["t_statistic", "t_p", "wilcoxon_statistic", "wilcoxon_p", "test_note"]


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def _resample_patterns(runs: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's B resamples of ``runs`` values as distinct count patterns and their frequencies.

    A resample's mean depends only on how often it drew each value, and with few runs there are
    few such patterns (35 for 4 runs), so the B resample means of any sample are the pattern
    means, each repeated as often as its pattern was drawn.
    """
    draws = np.random.default_rng(seed).integers(0, runs, size=(BOOTSTRAP_RESAMPLES, runs))
    counts = np.stack([(draws == position).sum(axis=1) for position in range(runs)], axis=1)
    patterns, frequencies = np.unique(counts, axis=0, return_counts=True)
    return patterns.astype(np.float64), frequencies


def _bootstrap_intervals(samples: np.ndarray, confidence: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap intervals of the mean for each row of ``samples`` [groups, runs]
    (each row sorted ascending), as numpy's linear-interpolated quantiles of the B resample means."""
    groups, runs = samples.shape
    patterns, frequencies = _resample_patterns(runs, seed)
    means = samples @ patterns.T / runs  # [groups, patterns]
    order = np.argsort(means, axis=1, kind="stable")
    sorted_means = np.take_along_axis(means, order, axis=1)
    cumulative = np.cumsum(frequencies[order], axis=1)  # resamples at or below each sorted pattern mean
    rows = np.arange(groups)

    def order_statistic(position: int) -> np.ndarray:
        """The ``position``-th (0-based) smallest of the B resample means of every row."""
        return sorted_means[rows, (cumulative > position).argmax(axis=1)]

    ends = []
    for quantile in ((1 - confidence) / 2, (1 + confidence) / 2):
        virtual = (BOOTSTRAP_RESAMPLES - 1) * quantile
        below = math.floor(virtual)
        fraction = virtual - below
        low = order_statistic(below)
        high = order_statistic(min(below + 1, BOOTSTRAP_RESAMPLES - 1))
        ends.append(low + fraction * (high - low))
    return ends[0], ends[1]


def grouped_summaries(groups: np.ndarray, values: np.ndarray, n_groups: int | None = None,
                      confidence: float = CONFIDENCE, seed=0) -> pd.DataFrame:
    """:func:`summarize` of the values of each group: one row per group code 0..n_groups − 1.

    ``groups`` holds each value's group code (integers from 0); a group with no values (or only
    NaN) gets runs 0 and NaN everywhere.
    """
    confidence = _check_confidence(confidence)
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if groups.shape != values.shape:
        raise ValueError(f"{values.size} values but {groups.size} group codes")
    if n_groups is None:
        n_groups = int(groups.max()) + 1 if groups.size else 0
    present = ~np.isnan(values)
    missing = np.bincount(groups[~present], minlength=n_groups)
    groups, values = groups[present], values[present]
    order = np.lexsort((values, groups))  # by group, each group's values ascending
    groups, values = groups[order], values[order]
    runs = np.bincount(groups, minlength=n_groups)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(groups, weights=values, minlength=n_groups) / runs
        squares = np.bincount(groups, weights=(values - mean[groups]) ** 2, minlength=n_groups)
        std = np.where(runs >= 2, np.sqrt(squares / (runs - 1)), np.nan)
    starts = np.cumsum(runs) - runs
    has_values = runs > 0
    smallest = np.full(n_groups, np.nan)
    largest = np.full(n_groups, np.nan)
    smallest[has_values] = values[starts[has_values]]
    largest[has_values] = values[starts[has_values] + runs[has_values] - 1]
    # A constant sample: its mean is the value itself and its spread exactly 0 (summing n copies
    # and dividing by n can be off in the last bit, which would give a hair-wide interval).
    constant = has_values & (smallest == largest)
    mean[constant] = smallest[constant]
    std[constant & (runs >= 2)] = 0.0

    ci_low = np.full(n_groups, np.nan)
    ci_high = np.full(n_groups, np.nan)
    interval = np.full(n_groups, NO_INTERVAL, dtype=object)
    t_rows = runs >= BOOTSTRAP_BELOW
    if t_rows.any():
        quantile = stats.t.ppf((1 + confidence) / 2, df=runs[t_rows] - 1)
        half = quantile * std[t_rows] / np.sqrt(runs[t_rows])
        ci_low[t_rows] = mean[t_rows] - half
        ci_high[t_rows] = mean[t_rows] + half
        interval[t_rows] = T_INTERVAL
    for count in range(2, BOOTSTRAP_BELOW):
        rows = np.flatnonzero(runs == count)
        if rows.size == 0:
            continue
        samples = values[starts[rows, None] + np.arange(count)]
        ci_low[rows], ci_high[rows] = _bootstrap_intervals(samples, confidence, seed)
        interval[rows] = BOOTSTRAP_INTERVAL
    ci_low[constant & (runs >= 2)] = mean[constant & (runs >= 2)]
    ci_high[constant & (runs >= 2)] = mean[constant & (runs >= 2)]

    return pd.DataFrame({"runs": runs, "missing": missing, "mean": mean, "std": std, "ci_low": ci_low,
                         "ci_high": ci_high, "interval": interval})


def summarize(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, seed=0) -> dict:
    """runs, missing, mean, std, ci_low, ci_high, interval of one sample (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    row = grouped_summaries(np.zeros(values.size, dtype=np.int64), values, 1, confidence, seed).iloc[0]
    return {name: (row[name] if name == "interval" else int(row[name]) if name in ("runs", "missing")
                   else float(row[name])) for name in SUMMARY_COLUMNS}


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order; NaN stays NaN and is not counted.

    For example p = (0.01, 0.04, 0.03) gives (3·0.01, max(2·0.03, 1·0.04), 2·0.03) = (0.03, 0.06, 0.06).
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    present = np.flatnonzero(~np.isnan(pvalues))
    m = present.size
    if m == 0:
        return adjusted
    order = present[np.argsort(pvalues[present], kind="stable")]
    scaled = (m - np.arange(m)) * pvalues[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def paired_tests(differences: Sequence[float] | np.ndarray) -> dict:
    """The paired t-test and (from :data:`WILCOXON_MIN_PAIRS` pairs) the Wilcoxon signed-rank test
    of differences against 0, NaN differences dropped; ``test_note`` says why a test is missing."""
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[~np.isnan(differences)]
    pairs = differences.size
    result = {"t_statistic": np.nan, "t_p": np.nan, "wilcoxon_statistic": np.nan, "wilcoxon_p": np.nan}
    notes = []
    all_equal = pairs >= 2 and bool(np.all(differences == differences[0]))
    if pairs == 0:
        notes.append("no pairs")
    elif pairs == 1:
        notes.append("1 pair")
    elif all_equal:
        notes.append("all differences equal: no t-test")
    else:
        test = stats.ttest_1samp(differences, 0.0)
        result["t_statistic"], result["t_p"] = float(test.statistic), float(test.pvalue)
    if 1 < pairs < WILCOXON_MIN_PAIRS:
        notes.append(f"fewer than {WILCOXON_MIN_PAIRS} pairs for Wilcoxon")
    elif pairs >= WILCOXON_MIN_PAIRS:
        if np.all(differences == 0):
            notes.append("all differences zero: no Wilcoxon")
        else:
            with warnings.catch_warnings():
                # Zeros or ties switch scipy to the normal approximation, which it announces.
                warnings.simplefilter("ignore", UserWarning)
                test = stats.wilcoxon(differences)
            result["wilcoxon_statistic"], result["wilcoxon_p"] = float(test.statistic), float(test.pvalue)
    result["test_note"] = "; ".join(notes)
    return result
