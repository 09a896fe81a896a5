"""Classification metrics and their summaries across folds and seeds (pure numpy, no models).

* WAR (weighted average recall) = accuracy = sum_c TP_c / N.
* UAR (unweighted average recall) = mean over classes of TP_c / N_c (balanced accuracy); the
  primary metric for imbalanced emotion corpora.
* macro-F1 = mean over classes of 2 TP_c / (2 TP_c + FP_c + FN_c); a class that is never
  predicted and never present scores 0 (sklearn's ``zero_division=0``).
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
    tp = np.diag(matrix).astype(float)
    denominator = 2 * tp + (matrix.sum(axis=0) - tp) + (matrix.sum(axis=1) - tp)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


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


def summarize(values, confidence: float = 0.95) -> dict:
    """Mean, sample std (ddof 1), population std (ddof 0, as the paper's np.std) and a t-interval."""
    values = np.asarray(values, dtype=float)
    n = values.size
    mean = float(values.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "std_ddof0": 0.0, "ci_low": float("nan"),
                "ci_high": float("nan")}
    sem = values.std(ddof=1) / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sem)
    return {"n": n, "mean": mean, "std": float(values.std(ddof=1)), "std_ddof0": float(values.std(ddof=0)),
            "ci_low": mean - half, "ci_high": mean + half}
