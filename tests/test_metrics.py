"""Known answers for every metric, cross-checked against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from workflow_scripts.metrics import classification_report, confusion_matrix, macro_f1, per_class_recall, uar, war

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
    # class 2 is neither true nor predicted: left out of the mean, as sklearn does
    assert macro_f1(matrix) == pytest.approx((2 / 3 + 2 / 3) / 2)
    report = classification_report([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert report["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": None}
    assert report["n"] == 3


# Subsets of a 4-class problem that lack a class, both ways: class 3 absent from the truth and the
# predictions (sklearn leaves it out of the mean), and class 3 absent from the truth but predicted
# (sklearn averages it in as 0).
SUBSETS_LACKING_A_CLASS = {
    "absent from truth and predictions": ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]),
    "absent from truth only": ([0, 0, 1, 1, 2, 2], [0, 3, 1, 1, 2, 0]),
}


@pytest.mark.parametrize("name", sorted(SUBSETS_LACKING_A_CLASS))
def test_macro_f1_on_subsets_lacking_a_class_agrees_with_scikit_learn(name):
    labels, predictions = SUBSETS_LACKING_A_CLASS[name]
    matrix = confusion_matrix(labels, predictions, 4)
    expected = skm.f1_score(labels, predictions, average="macro", zero_division=0)
    assert macro_f1(matrix) == pytest.approx(expected)


def test_macro_f1_known_answers_on_subsets_lacking_a_class():
    # Absent from both: F1 class 0 = 2/(2+1+1) = .5, class 1 = 4/(4+1) = .8, class 2 = 2/(2+1) = 2/3.
    labels, predictions = SUBSETS_LACKING_A_CLASS["absent from truth and predictions"]
    assert macro_f1(confusion_matrix(labels, predictions, 4)) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Predicted but never true: class 3 (one false positive) scores 0 and is averaged in.
    labels, predictions = SUBSETS_LACKING_A_CLASS["absent from truth only"]
    # class 0: tp 1, fp 1, fn 1 -> .5; class 1: tp 2, fn 0, fp 0 -> 1; class 2: tp 1, fn 1 -> 2/3; class 3: 0
    assert macro_f1(confusion_matrix(labels, predictions, 4)) == pytest.approx((0.5 + 1 + 2 / 3 + 0) / 4)
    assert np.isnan(macro_f1(np.zeros((3, 3), dtype=int)))
