"""Segmentation metrics in numpy: Dice, IoU, precision, recall, pixel-wise ROC AUC and average precision (AUPRC)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of two binary arrays of one shape."""
    p, g = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


@dataclass(frozen=True)
class Overlap:
    """A mask's overlap with a reference: voxel counts and the scores made of them (e.g. per slice or volume)."""

    tp: int     # flagged and in the reference
    fp: int     # flagged, not in the reference
    fn: int     # in the reference, not flagged

    @property
    def dice(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 when both are empty."""
        return 1.0 if self.tp + self.fp + self.fn == 0 else 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN); 1.0 when both are empty."""
        return 1.0 if self.tp + self.fp + self.fn == 0 else self.tp / (self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP): the share of flagged pixels that are anomalous; 1.0 when nothing is flagged."""
        return 1.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN): the share of anomalous pixels that are flagged; 1.0 when there are none."""
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


def overlap(pred: np.ndarray, truth: np.ndarray) -> Overlap:
    """The overlap of two binary arrays of one shape (ValueError naming both shapes otherwise)."""
    return Overlap(*_counts(pred, truth))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN); 1.0 when both are empty."""
    return overlap(pred, truth).dice


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FP + FN); 1.0 when both are empty."""
    return overlap(pred, truth).iou


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FP): the share of flagged pixels that are anomalous; 1.0 when nothing is flagged."""
    return overlap(pred, truth).precision


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FN): the share of anomalous pixels that are flagged; 1.0 when there are none."""
    return overlap(pred, truth).recall


def roc_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Pixel-wise ROC AUC = P(score of an anomalous pixel > score of a normal one), ties counted half
    (the Mann-Whitney U statistic). NaN when truth holds only one class."""
    s, g = np.asarray(score, np.float64).ravel(), np.asarray(truth, bool).ravel()
    if s.shape != g.shape:
        raise ValueError(f"score size {s.size} differs from ground truth size {g.size}")
    n_pos = int(g.sum())
    n_neg = g.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)                                   # average ranks handle ties
    return float((ranks[g].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    """Pixel-wise AUPRC as average precision, sum over thresholds of (R_k - R_(k-1)) P_k, one threshold per distinct
    score from the highest down (tied pixels enter together; sklearn's definition). NaN when nothing is anomalous."""
    s, g = np.asarray(score, np.float64).ravel(), np.asarray(truth, bool).ravel()
    if s.shape != g.shape:
        raise ValueError(f"score size {s.size} differs from ground truth size {g.size}")
    n_pos = int(g.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    ranked, hits = s[order], np.cumsum(g[order])                   # (N,) each, highest score first
    last = np.append(ranked[1:] != ranked[:-1], True)              # (N,) the last pixel of each tied run
    tp, flagged = hits[last], np.flatnonzero(last) + 1             # (K,) at each threshold
    gained = np.diff(tp, prepend=0) / n_pos                        # (K,) recall gained at each threshold
    return float(np.sum(gained * tp / flagged))


def all_metrics(pred: np.ndarray, score: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"dice": dice(pred, truth), "iou": iou(pred, truth), "precision": precision(pred, truth),
            "recall": recall(pred, truth), "auc": roc_auc(score, truth)}
