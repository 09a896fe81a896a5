"""Classification metrics and their summaries across folds and seeds (pure numpy, no models).

* WAR (weighted average recall) = accuracy = sum_c TP_c / N.
* UAR (unweighted average recall) = mean over classes of TP_c / N_c (balanced accuracy); the
  primary metric for imbalanced emotion corpora.
* macro-F1 = mean of 2 TP_c / (2 TP_c + FP_c + FN_c) over the classes present in the true or the
  predicted labels (sklearn's ``f1_score(average="macro")``): a class that is neither true nor
  predicted is left out, one that is predicted but never true scores 0 (``zero_division=0``).

Across runs, :func:`summarize_over_folds` treats the folds as the independent samples and the
seeds as repeated measurements within a fold (see there).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """TP_c / N_c; NaN for a class with no true examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def war(matrix: np.ndarray) -> float:
    return float(np.trace(matrix) / matrix.sum())


def uar(matrix: np.ndarray) -> float:
    """Mean recall over the classes that occur (classes absent from the labels are skipped)."""
    return float(np.nanmean(per_class_recall(matrix)))


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes in the true or predicted labels; NaN for an empty matrix.

    A class absent from both would score 0/0; averaging it in as 0 (as a mean over every column
    of the matrix would) lowers the score of a subset that lacks a class, unlike sklearn.
    """
    tp = np.diag(matrix).astype(float)
    denominator = 2 * tp + (matrix.sum(axis=0) - tp) + (matrix.sum(axis=1) - tp)
    present = denominator > 0  # true or predicted at least once
    if not present.any():
        return float("nan")
    return float((2 * tp[present] / denominator[present]).mean())


def classification_report(labels, predictions, classes: list[str]) -> dict:
    """Everything ``metrics.json`` reports about one set of predictions."""
    matrix = confusion_matrix(labels, predictions, len(classes))
    recall = per_class_recall(matrix)
    return {
        "uar": uar(matrix),
        "war": war(matrix),
        "macro_f1": macro_f1(matrix),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "confusion_matrix": matrix.tolist(),
        "n": int(matrix.sum()),
    }


def summarize(values, confidence: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Mean, sample std (ddof 1), population std (ddof 0, as the paper's np.std) and a t-interval.

    The t-interval of the mean (df = n - 1) is clipped to ``bounds``, the range the values can
    take: a metric in [0, 1] gets no interval end outside it. With ``n < 2`` the sample std and
    the interval are NaN (the population std is 0).
    """
    values = np.asarray(values, dtype=float)
    n = values.size
    mean = float(values.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "std_ddof0": 0.0, "ci_low": float("nan"),
                "ci_high": float("nan")}
    sem = values.std(ddof=1) / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sem)
    low, high = bounds
    return {"n": n, "mean": mean, "std": float(values.std(ddof=1)), "std_ddof0": float(values.std(ddof=0)),
            "ci_low": float(max(mean - half, low)), "ci_high": float(min(mean + half, high))}


def summarize_over_folds(values, folds, confidence: float = 0.95,
                         bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Summarize runs of one configuration over folds, with the seeds nested in the folds.

    Runs that share a test fold share their test data, so their seeds are not independent
    samples: pooling fold × seed runs would narrow the interval as seeds are added. Instead:

    * each fold's seeds are averaged into a fold mean; ``mean``, ``std`` (ddof 1), ``std_ddof0``
      and the t-interval (df = folds - 1, clipped to ``bounds``) are :func:`summarize` of the fold
      means, every fold weighted equally; ``n`` is the number of folds;
    * ``seed_std`` is the seed-to-seed spread, the pooled within-fold sample std:
      ``sqrt(sum_f (k_f - 1) s_f^2 / sum_f (k_f - 1))`` with ``k_f`` seeds and within-fold sample
      variance ``s_f^2`` in fold ``f``; with the same seeds in every fold that is
      ``sqrt(mean over folds of s_f^2)``. NaN when no fold has two seeds.
    """
    values = np.asarray(values, dtype=float)
    folds = np.asarray(folds)
    if values.shape != folds.shape:
        raise ValueError(f"{values.size} values but {folds.size} fold labels")
    fold_means, squares, degrees = [], 0.0, 0
    for fold in np.unique(folds):
        in_fold = values[folds == fold]
        fold_means.append(in_fold.mean())
        squares += float(((in_fold - in_fold.mean()) ** 2).sum())
        degrees += in_fold.size - 1
    summary = summarize(fold_means, confidence, bounds)
    summary["seed_std"] = float(np.sqrt(squares / degrees)) if degrees > 0 else float("nan")
    return summary
