"""Metrics against hand-worked cases (AnoDDPM's code swapped precision and recall: these would catch it)."""

import numpy as np
import pytest

from sss_viewer.core.metrics import all_metrics, dice, iou, precision, recall, roc_auc

# pred flags 4 pixels, truth has 2; they share 1:  TP=1, FP=3, FN=1
PRED = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
TRUTH = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool)


def test_hand_worked_counts():
    assert dice(PRED, TRUTH) == pytest.approx(2 * 1 / (2 * 1 + 3 + 1))     # 2/6
    assert iou(PRED, TRUTH) == pytest.approx(1 / 5)
    assert precision(PRED, TRUTH) == pytest.approx(1 / 4)                  # TP / flagged
    assert recall(PRED, TRUTH) == pytest.approx(1 / 2)                     # TP / anomalous


def test_precision_and_recall_are_not_swapped():
    big_pred = np.ones((4, 4), bool)            # flags everything
    small_truth = np.zeros((4, 4), bool)
    small_truth[0, 0] = True
    assert recall(big_pred, small_truth) == 1.0
    assert precision(big_pred, small_truth) == pytest.approx(1 / 16)


def test_empty_cases():
    z = np.zeros((3, 3), bool)
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0
    assert dice(z, TRUTH) == 0.0 and recall(z, TRUTH) == 0.0 and precision(z, TRUTH) == 1.0
    assert np.isnan(roc_auc(np.arange(9.0), z))


def test_auc_hand_worked_with_ties():
    score = np.array([0.9, 0.5, 0.5, 0.1])
    truth = np.array([1, 1, 0, 0], bool)
    # positive/negative pairs: (0.9,0.5)=1 (0.9,0.1)=1 (0.5,0.5)=0.5 (0.5,0.1)=1 -> 3.5/4
    assert roc_auc(score, truth) == pytest.approx(3.5 / 4)
    assert roc_auc(-score, truth) == pytest.approx(0.5 / 4)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 200).astype(float)
    truth = rng.random(200) < 0.3
    pos, neg = score[truth], score[~truth]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(score, truth) == pytest.approx(pairwise)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(PRED, TRUTH[:2])
    assert set(all_metrics(PRED, PRED.astype(float), TRUTH)) == {"dice", "iou", "precision", "recall", "auc"}
