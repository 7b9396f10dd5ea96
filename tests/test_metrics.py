"""Metrics against hand-worked cases (AnoDDPM's code swapped precision and recall: these would catch it)."""

import numpy as np
import pytest

from sss_viewer.core.metrics import (Overlap, all_metrics, average_precision, dice, iou, overlap, precision, recall,
                                     roc_auc)

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


def test_average_precision_hand_worked():
    # ranked 1 0 1 0: thresholds give (P, R) = (1, 1/2), (1/2, 1/2), (2/3, 1), (1/2, 1) -> 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
    # ties enter together: {0.9}: TP 0 of 1; {0.5, 0.5}: TP 1 of 3, R 1/2; {0.1}: TP 2 of 4, R 1 -> 1/6 + 1/4
    tied = np.array([0.9, 0.5, 0.5, 0.1])
    assert average_precision(tied, np.array([0, 1, 0, 1], bool)) == pytest.approx(5 / 12)
    assert average_precision(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0        # perfect ranking
    assert average_precision(np.zeros(4), np.array([0, 0, 1, 1], bool)) == 0.5             # one tie: the prevalence
    assert np.isnan(average_precision(np.arange(4.0), np.zeros(4, bool)))


def test_average_precision_matches_threshold_by_threshold_definition():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 6, 300).astype(float)
    truth = rng.random(300) < 0.2
    ap, recall_before = 0.0, 0.0
    for thr in np.unique(score)[::-1]:
        flagged = score >= thr
        tp = np.count_nonzero(flagged & truth)
        ap += (tp / truth.sum() - recall_before) * tp / flagged.sum()
        recall_before = tp / truth.sum()
    assert average_precision(score, truth) == pytest.approx(ap)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(PRED, TRUTH[:2])
    with pytest.raises(ValueError, match="size"):
        average_precision(np.arange(3.0), TRUTH)
    assert set(all_metrics(PRED, PRED.astype(float), TRUTH)) == {"dice", "iou", "precision", "recall", "auc"}


def test_overlap_counts_and_scores():
    o = overlap(PRED, TRUTH)
    assert o == Overlap(tp=1, fp=3, fn=1)
    assert (o.dice, o.iou, o.precision, o.recall) == pytest.approx((2 / 6, 1 / 5, 1 / 4, 1 / 2))
    assert (o.dice, o.iou, o.precision, o.recall) == (dice(PRED, TRUTH), iou(PRED, TRUTH), precision(PRED, TRUTH),
                                                    recall(PRED, TRUTH))
    volume = np.zeros((2, 3, 4), bool)                                      # 3-D, and 0/1 ints count as booleans
    volume[0, :2, :2] = True                                                # 4 flagged
    truth = np.zeros((2, 3, 4), np.uint8)
    truth[0, 1:3, 1:3] = 1                                                  # 4 in the reference, 1 shared
    truth[1, 0, 0] = 1
    assert overlap(volume, truth) == Overlap(1, 3, 4)
    assert overlap(volume, truth).dice == pytest.approx(2 / 9)
    assert overlap(volume[0], truth[0]) == Overlap(1, 3, 3)                 # one slice of it
    assert all(isinstance(n, int) for n in (o.tp, o.fp, o.fn))


def test_overlap_empty_cases():
    z = np.zeros((3, 3), bool)
    nothing = overlap(z, z)
    assert nothing == Overlap(0, 0, 0)
    assert (nothing.dice, nothing.iou, nothing.precision, nothing.recall) == (1.0, 1.0, 1.0, 1.0)
    missed = overlap(z, TRUTH)                                              # flags nothing of a 2-pixel reference
    assert missed == Overlap(0, 0, 2) and (missed.dice, missed.precision, missed.recall) == (0.0, 1.0, 0.0)
    false_alarm = overlap(PRED, z)                                          # flags 4, the reference is empty
    assert false_alarm == Overlap(0, 4, 0) and (false_alarm.dice, false_alarm.precision, false_alarm.recall) == (
        0.0, 0.0, 1.0)


def test_overlap_shape_mismatch():
    with pytest.raises(ValueError, match=r"prediction shape \(3, 3\) differs from ground truth shape \(2, 3\)"):
        overlap(PRED, TRUTH[:2])
    with pytest.raises(AttributeError):
        Overlap(1, 2, 3).tp = 0                                             # frozen
