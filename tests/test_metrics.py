"""Known answers for every metric, cross-checked against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from workflow_scripts.metrics import (classification_report, confusion_matrix, macro_f1, per_class_recall,
                                      summarize, summarize_over_folds, uar, war)

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


def test_summary_known_answer():
    summary = summarize([0.70, 0.74, 0.78])
    assert summary["mean"] == pytest.approx(0.74)
    assert summary["std"] == pytest.approx(0.04)
    assert summary["std_ddof0"] == pytest.approx(0.04 * np.sqrt(2 / 3))
    half = 4.302652729911275 * 0.04 / np.sqrt(3)  # t(0.975, df=2)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((0.74 - half, 0.74 + half))
    single = summarize([0.5])
    assert single["n"] == 1 and np.isnan(single["ci_low"])


def test_summary_interval_is_clipped_to_the_bounds():
    half = 12.706204736174705 * 0.02  # t(0.975, df=1) * sem; std = .04 / sqrt(2), sem = std / sqrt(2)
    high = summarize([0.95, 0.99], bounds=(0.0, 1.0))
    assert (high["ci_low"], high["ci_high"]) == pytest.approx((0.97 - half, 1.0))
    low = summarize([0.01, 0.05], bounds=(0.0, 1.0))
    assert (low["ci_low"], low["ci_high"]) == pytest.approx((0.0, 0.03 + half))
    assert summarize([0.01, 0.05])["ci_low"] == pytest.approx(0.03 - half)  # unbounded by default


# 2 seeds x 3 folds. Fold means .72 .78 .69 (mean .73, deviations -.01 .05 -.04, sum of squares
# .0042); within-fold sample variances .0008 .0008 .0018.
NESTED_VALUES = [0.70, 0.74, 0.76, 0.80, 0.66, 0.72]
NESTED_FOLDS = [1, 1, 2, 2, 3, 3]


def test_summary_over_folds_averages_the_seeds_within_each_fold():
    summary = summarize_over_folds(NESTED_VALUES, NESTED_FOLDS, bounds=(0.0, 1.0))
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.73)
    assert summary["std"] == pytest.approx(np.sqrt(0.0042 / 2))
    assert summary["std_ddof0"] == pytest.approx(np.sqrt(0.0042 / 3))
    half = 4.302652729911275 * np.sqrt(0.0042 / 2) / np.sqrt(3)  # t(0.975, df = 3 folds - 1)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((0.73 - half, 0.73 + half))
    assert summary["seed_std"] == pytest.approx(np.sqrt((0.0008 + 0.0008 + 0.0018) / 3))


def test_seed_std_pools_within_fold_variances_by_their_degrees_of_freedom():
    # fold 1: three seeds .70 .74 .78 (variance .0016, df 2); fold 2: two seeds .60 .64 (.0008, df 1);
    # fold 3: one seed (df 0, no spread to measure).
    summary = summarize_over_folds([0.70, 0.74, 0.78, 0.60, 0.64, 0.50], [1, 1, 1, 2, 2, 3])
    assert summary["seed_std"] == pytest.approx(np.sqrt((2 * 0.0016 + 0.0008) / 3))
    assert summary["mean"] == pytest.approx((0.74 + 0.62 + 0.50) / 3)  # every fold weighs the same


def test_summary_over_one_fold_or_one_seed():
    one_fold = summarize_over_folds([0.70, 0.74], [4, 4])
    assert one_fold["n"] == 1 and one_fold["mean"] == pytest.approx(0.72) and one_fold["std_ddof0"] == 0.0
    assert np.isnan(one_fold["std"]) and np.isnan(one_fold["ci_low"]) and np.isnan(one_fold["ci_high"])
    assert one_fold["seed_std"] == pytest.approx(np.sqrt(0.0008))
    one_seed = summarize_over_folds([0.70, 0.74, 0.78], [1, 2, 3])
    assert np.isnan(one_seed["seed_std"])
    assert {k: one_seed[k] for k in ("n", "mean", "std", "ci_low")} == pytest.approx(
        {k: summarize([0.70, 0.74, 0.78])[k] for k in ("n", "mean", "std", "ci_low")})
