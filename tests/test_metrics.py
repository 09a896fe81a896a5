"""Known answers for every metric, cross-checked against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from workflow_scripts.metrics import (classification_report, confusion_matrix, macro_f1, per_class_recall,
                                      summarize, uar, war)

LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
PREDICTIONS = np.array([0, 0, 1, 2, 1, 1, 2, 0, 2, 0])


def test_confusion_matrix_rows_are_truth():
    assert confusion_matrix(LABELS, PREDICTIONS, 4).tolist() == [
        [2, 1, 1, 0],
        [0, 2, 0, 0],
        [1, 0, 2, 0],
        [1, 0, 0, 0],
    ]


def test_hand_computed_values():
    matrix = confusion_matrix(LABELS, PREDICTIONS, 4)
    assert war(matrix) == pytest.approx(6 / 10)
    assert per_class_recall(matrix).tolist() == pytest.approx([0.5, 1.0, 2 / 3, 0.0])
    assert uar(matrix) == pytest.approx((0.5 + 1 + 2 / 3 + 0) / 4)
    # F1: class 0: 2*2/(4+2+2)=0.5; class 1: 4/(4+1+0)=0.8; class 2: 4/(4+1+1)=2/3; class 3: 0
    assert macro_f1(matrix) == pytest.approx((0.5 + 0.8 + 2 / 3 + 0) / 4)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    matrix = confusion_matrix(labels, predictions, 4)
    assert uar(matrix) == pytest.approx(skm.balanced_accuracy_score(labels, predictions))
    assert war(matrix) == pytest.approx(skm.accuracy_score(labels, predictions))
    assert macro_f1(matrix) == pytest.approx(skm.f1_score(labels, predictions, average="macro", zero_division=0))


def test_class_never_seen_or_predicted():
    matrix = confusion_matrix([0, 0, 1], [0, 1, 1], 3)
    assert uar(matrix) == pytest.approx(0.75)  # class 2 has no examples: not averaged in
    assert macro_f1(matrix) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    report = classification_report([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert report["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": None}
    assert report["n"] == 3


def test_summary_known_answer():
    summary = summarize([0.70, 0.74, 0.78])
    assert summary["mean"] == pytest.approx(0.74)
    assert summary["std"] == pytest.approx(0.04)
    assert summary["std_ddof0"] == pytest.approx(0.04 * np.sqrt(2 / 3))
    half = 4.302652729911275 * 0.04 / np.sqrt(3)  # t(0.975, df=2)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((0.74 - half, 0.74 + half))
    single = summarize([0.5])
    assert single["n"] == 1 and np.isnan(single["ci_low"])
