"""Classification metrics of one set of predictions (pure numpy, no models).

* WAR (weighted average recall) = accuracy = sum_c TP_c / N.
* UAR (unweighted average recall) = mean over classes of TP_c / N_c (balanced accuracy); the
  primary metric for imbalanced emotion corpora.
* macro-F1 = mean of 2 TP_c / (2 TP_c + FP_c + FN_c) over the classes present in the true or the
  predicted labels (sklearn's ``f1_score(average="macro")``): a class that is neither true nor
  predicted is left out, one that is predicted but never true scores 0 (``zero_division=0``).

Across runs, :mod:`workflow_scripts.report.statistics` summarises these with the seeds nested in
the folds (the performance table, the findings, every aggregated analysis table).
"""

from __future__ import annotations

import numpy as np


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
