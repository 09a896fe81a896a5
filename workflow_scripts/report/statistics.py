"""Summaries over a seeds × folds grid and paired tests: the statistics behind every report table.

Pure numpy/scipy/pandas, no file input; :mod:`workflow_scripts.report.aggregate`,
:mod:`~workflow_scripts.report.performance` and :mod:`~workflow_scripts.report.findings` apply
them (definitions: ../shared/notes/analysis-math.md, "Intervals and tests over a seeds × folds grid").

**Why nested.** Runs of one fold share their train, validation and test clips; seeds vary only the
initialisation and the batch order. They are repeated measures of one fold, not independent
samples: pooling seeds × folds as one sample makes intervals too narrow and tests too eager (with
5 folds × 3 seeds, fold sd 1 and seed sd 0.3, a pooled "95 %" interval covers the truth about
70 % of the time; ``tests/test_report_statistics.py`` simulates it).

**Summary of one sample** (the values of one quantity over the runs of one configuration, each
with its fold label; :func:`nested_summaries` for many groups at once, :func:`summarize` for one).
NaN values are dropped first and counted (``missing``). Of the ``runs`` values left:

1. each fold's values (its seeds) are averaged into a fold mean;
2. the *units* the interval is over are the fold means when there are at least 2 folds, else
   (one fold) the seeds' values themselves -- then the only spread is across seeds on fixed test
   clips, which says nothing about other speakers, and the ``interval`` label says so;
3. ``mean`` is the mean of the units (every fold weighs the same); ``std`` their sample standard
   deviation (ddof 1, NaN with one unit); ``seed_std`` the seed-to-seed spread, the pooled
   within-fold sample standard deviation ``sqrt(Σ_f Σ_s (x_fs − x̄_f)² / Σ_f (k_f − 1))``
   (NaN when no fold has two seeds);
4. the interval, by the number of units ``u``:

   - ``u >= T_FROM`` (5): the t-interval ``mean ± t(1 − α/2, u − 1) · std / √u`` at
     ``confidence`` (95 %); ``interval`` is ``"t95 over folds"`` or, on one fold,
     ``"t95 over seeds (1 fold)"``;
   - ``2 <= u < T_FROM``: the range of the units, ``[min, max]`` -- not a confidence interval (at 2
     values a percentile bootstrap would be exactly this, with 50 % coverage); ``interval`` is
     ``"range over folds"`` or ``"range over seeds (1 fold)"``;
   - ``u <= 1``: none (``interval = "none"``, NaN ends).

   A constant sample has ``std = 0`` and both ends equal to the mean, exactly. Intervals are not
   clipped unless ``bounds`` are given (the performance metrics are proportions).

A caller may name its folds' units otherwise (``fold_noun``: subspace pairs that cross folds are
nested in their *fold pair*).

**Paired tests** (:func:`paired_tests`, :func:`grouped_paired_tests`) on the units of matched
differences d = LoRA − frozen (per fold, the mean over seeds of the matched differences; on one
fold, the seeds' differences): the paired t-test (``scipy.stats.ttest_1samp(d, 0)``) from
:data:`T_FROM` units, as for the interval it is dual to, and the Wilcoxon signed-rank test
(two-sided, zeros dropped) from :data:`WILCOXON_MIN_UNITS` (6) units: with n units its smallest
exact two-sided p is 2 / 2ⁿ, 0.0625 for n = 5. ``test_note`` says why a test is missing.

**Holm** (:func:`holm`): the step-down adjustment of a family of p-values (here: one quantity
across layers): sort the m p-values ascending, p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j)).
NaN p-values stay NaN and are not counted in m.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
#: From this many units (fold means, or seeds on one fold) on: the t-interval and the t-test;
#: below it, the range of the units and no test (the brief: a range of 2-4 values is a range).
T_FROM = 5
#: The Wilcoxon signed-rank test needs this many units before its exact p can go below 0.05.
WILCOXON_MIN_UNITS = 6

NO_INTERVAL = "none"
ONE_FOLD = "seeds (1 fold)"

SUMMARY_COLUMNS = ["runs", "units", "missing", "mean", "std", "seed_std", "ci_low", "ci_high", "interval"]
TEST_COLUMNS = ["t_statistic", "t_p", "wilcoxon_statistic", "wilcoxon_p", "test_note"]


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def interval_label(kind: str, multi_fold: bool, fold_noun: str = "folds",
                   confidence: float = CONFIDENCE) -> str:
    """What an interval is and what it is over, e.g. ``"t95 over folds"``, ``"range over seeds (1 fold)"``."""
    if kind == NO_INTERVAL:
        return NO_INTERVAL
    over = fold_noun if multi_fold else ONE_FOLD
    name = f"t{round(100 * confidence)}" if kind == "t" else "range"
    return f"{name} over {over}"


def interval_kind(units: int) -> str:
    """``"t"``, ``"range"`` or ``"none"`` for an interval over ``units`` values."""
    if units >= T_FROM:
        return "t"
    return "range" if units >= 2 else NO_INTERVAL


def fold_units(groups: np.ndarray, folds: Sequence, values: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The units each group's interval is over, and each group's run and fold counts.

    Returns ``(units, counts)``: ``units`` has one row per unit (``group``, ``value``): the fold
    means of a group with two or more folds, the values themselves for a group with one fold;
    ``counts`` is indexed by group with ``runs``, ``folds``, ``seed_std``. NaN values must be
    dropped by the caller.
    """
    data = pd.DataFrame({"group": np.asarray(groups, dtype=np.int64), "fold": np.asarray(folds, dtype=object),
                         "value": np.asarray(values, dtype=np.float64)})
    cells = data.groupby(["group", "fold"], sort=True)["value"].agg(["size", "mean", "var"]).reset_index()
    cells["squares"] = cells["var"].fillna(0.0) * (cells["size"] - 1)
    cells["degrees"] = cells["size"] - 1
    counts = cells.groupby("group").agg(runs=("size", "sum"), folds=("fold", "size"), squares=("squares", "sum"),
                                        degrees=("degrees", "sum"))
    with np.errstate(invalid="ignore", divide="ignore"):
        counts["seed_std"] = np.where(counts["degrees"] > 0, np.sqrt(counts["squares"] / counts["degrees"]), np.nan)
    multi = counts.index[counts["folds"] >= 2]
    from_folds = cells.loc[cells["group"].isin(multi), ["group", "mean"]].rename(columns={"mean": "value"})
    from_seeds = data.loc[~data["group"].isin(multi), ["group", "value"]]
    units = pd.concat([from_folds, from_seeds], ignore_index=True)
    return units, counts[["runs", "folds", "seed_std"]]


def _unit_summaries(units: pd.DataFrame, n_groups: int) -> pd.DataFrame:
    """count, mean, std (ddof 1), min and max of each group's units, indexed 0..n_groups − 1."""
    stats_of = units.groupby("group")["value"].agg(["size", "mean", "std", "min", "max"])
    stats_of = stats_of.reindex(range(n_groups))
    stats_of["size"] = stats_of["size"].fillna(0).astype(np.int64)
    # A constant sample: its mean is the value itself and its spread exactly 0 (summing n copies and
    # dividing by n can be off in the last bit, which would give a hair-wide interval).
    constant = (stats_of["size"] > 0) & (stats_of["min"] == stats_of["max"])
    stats_of.loc[constant, "mean"] = stats_of.loc[constant, "min"]
    stats_of.loc[constant & (stats_of["size"] >= 2), "std"] = 0.0
    return stats_of


def nested_summaries(groups: np.ndarray, folds: Sequence, values: np.ndarray, n_groups: int | None = None,
                     confidence: float = CONFIDENCE, bounds: tuple[float, float] = (-np.inf, np.inf),
                     fold_noun: str | Sequence[str] = "folds") -> pd.DataFrame:
    """The nested summary (module docstring) of each group's values: one row per group code
    0..n_groups − 1 with :data:`SUMMARY_COLUMNS` and ``folds``.

    ``groups`` holds each value's group code (integers from 0), ``folds`` its fold label (any
    hashable: an int, or a fold pair's text); ``fold_noun`` names the units when they are fold
    means (one noun, or one per group). A group with no values (or only NaN) gets runs 0 and NaN.
    """
    confidence = _check_confidence(confidence)
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    folds = np.asarray(folds, dtype=object)
    if not groups.shape == values.shape == folds.shape:
        raise ValueError(f"{values.size} values, {groups.size} group codes and {folds.size} fold labels")
    if n_groups is None:
        n_groups = int(groups.max()) + 1 if groups.size else 0
    present = ~np.isnan(values)
    missing = np.bincount(groups[~present], minlength=n_groups)
    units, counts = fold_units(groups[present], folds[present], values[present])
    counts = counts.reindex(range(n_groups))
    summary = _unit_summaries(units, n_groups)

    size = summary["size"].to_numpy()
    mean = summary["mean"].to_numpy(dtype=np.float64)
    std = summary["std"].to_numpy(dtype=np.float64)
    low, high = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    t_rows = size >= T_FROM
    if t_rows.any():
        half = stats.t.ppf((1 + confidence) / 2, df=size[t_rows] - 1) * std[t_rows] / np.sqrt(size[t_rows])
        low[t_rows], high[t_rows] = mean[t_rows] - half, mean[t_rows] + half
    range_rows = (size >= 2) & ~t_rows
    low[range_rows] = summary["min"].to_numpy(dtype=np.float64)[range_rows]
    high[range_rows] = summary["max"].to_numpy(dtype=np.float64)[range_rows]
    low, high = np.maximum(low, bounds[0]), np.minimum(high, bounds[1])

    fold_count = counts["folds"].fillna(0).to_numpy(dtype=np.int64)
    nouns = [fold_noun] * n_groups if isinstance(fold_noun, str) else list(fold_noun)
    interval = [interval_label(interval_kind(int(size[g])), fold_count[g] >= 2, nouns[g], confidence)
                for g in range(n_groups)]
    return pd.DataFrame({
        "runs": counts["runs"].fillna(0).to_numpy(dtype=np.int64), "units": size, "folds": fold_count,
        "missing": missing, "mean": mean, "std": std, "seed_std": counts["seed_std"].to_numpy(dtype=np.float64),
        "ci_low": low, "ci_high": high, "interval": interval})


def summarize(values: Sequence[float] | np.ndarray, folds: Sequence | None = None, confidence: float = CONFIDENCE,
              bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """:data:`SUMMARY_COLUMNS` and ``folds`` of one sample (the module docstring); without
    ``folds`` every value counts as its own fold (values already at the fold level)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    folds = np.arange(values.size) if folds is None else np.asarray(folds, dtype=object).ravel()
    row = nested_summaries(np.zeros(values.size, dtype=np.int64), folds, values, 1, confidence, bounds).iloc[0]
    return {name: (row[name] if name == "interval" else int(row[name]) if name in ("runs", "units", "missing", "folds")
                   else float(row[name])) for name in [*SUMMARY_COLUMNS, "folds"]}


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


def _wilcoxon(differences: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        # Zeros or ties switch scipy to the normal approximation, which it announces.
        warnings.simplefilter("ignore", UserWarning)
        test = stats.wilcoxon(differences)
    return float(test.statistic), float(test.pvalue)


def grouped_paired_tests(units: pd.DataFrame, n_groups: int) -> pd.DataFrame:
    """The paired t-test (from :data:`T_FROM` units) and the Wilcoxon signed-rank test (from
    :data:`WILCOXON_MIN_UNITS`) of each group's unit differences against 0 (``units``: ``group``,
    ``value``, as :func:`fold_units` gives them; NaN dropped): one row per group code
    0..n_groups − 1 with :data:`TEST_COLUMNS`; ``test_note`` says why a test is missing.

    The t-test is computed for all groups at once, as ``scipy.stats.ttest_1samp(d, 0)`` would:
    t = mean / (std / √n), p = 2 · sf(|t|, n − 1).
    """
    units = units[units["value"].notna()]
    summary = _unit_summaries(units, n_groups)
    size = summary["size"].to_numpy()
    mean, std = summary["mean"].to_numpy(dtype=np.float64), summary["std"].to_numpy(dtype=np.float64)
    equal = (size >= 2) & (summary["min"] == summary["max"]).to_numpy()
    tested = (size >= T_FROM) & ~equal
    t_statistic, t_p = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    t_statistic[tested] = mean[tested] / (std[tested] / np.sqrt(size[tested]))
    t_p[tested] = 2 * stats.t.sf(np.abs(t_statistic[tested]), df=size[tested] - 1)
    w_statistic, w_p = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    notes = []
    values_of = dict(tuple(units.groupby("group")["value"])) if (size >= WILCOXON_MIN_UNITS).any() else {}
    for group in range(n_groups):
        count, note = int(size[group]), []
        if count < T_FROM:
            note.append(f"{count} unit{'s' * (count != 1)}: no test below {T_FROM}")
        elif equal[group]:
            note.append("all differences equal: no t-test")
        if T_FROM <= count < WILCOXON_MIN_UNITS:
            note.append(f"fewer than {WILCOXON_MIN_UNITS} units for Wilcoxon")
        elif count >= WILCOXON_MIN_UNITS:
            differences = values_of[group].to_numpy(dtype=np.float64)
            if np.all(differences == 0):
                note.append("all differences zero: no Wilcoxon")
            else:
                w_statistic[group], w_p[group] = _wilcoxon(differences)
        notes.append("; ".join(note))
    return pd.DataFrame({"t_statistic": t_statistic, "t_p": t_p, "wilcoxon_statistic": w_statistic,
                         "wilcoxon_p": w_p, "test_note": notes}, columns=TEST_COLUMNS)


def paired_tests(differences: Sequence[float] | np.ndarray) -> dict:
    """:func:`grouped_paired_tests` of one sample of unit-level differences."""
    differences = np.asarray(differences, dtype=np.float64).ravel()
    row = grouped_paired_tests(pd.DataFrame({"group": np.zeros(differences.size, dtype=np.int64),
                                             "value": differences}), 1).iloc[0]
    return {name: (row[name] if name == "test_note" else float(row[name])) for name in TEST_COLUMNS}
