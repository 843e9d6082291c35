"""Binary change / detection metrics from one confusion matrix, and a memory-bounded ROC-AUC.

Metrics over a whole data set come from one confusion matrix accumulated over
all its pixels (METHODS.md section 1), not averaged per image. ROC-AUC is
computed from score histograms, so it can be accumulated window by window over
rasters of any size; with 4096 bins over [0, 1] it matches the exact
rank-based AUC to about 1e-4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np


@dataclass
class Confusion:
    """Counts of a binary prediction against a reference (1 = positive, e.g. changed)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def update(self, prediction: np.ndarray, reference: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        p = np.asarray(prediction).astype(bool)
        r = np.asarray(reference).astype(bool)
        if valid is not None:
            p, r = p[valid], r[valid]
        self.tp += int(np.count_nonzero(p & r))
        self.fp += int(np.count_nonzero(p & ~r))
        self.fn += int(np.count_nonzero(~p & r))
        self.tn += int(np.count_nonzero(~p & ~r))

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def scores(self) -> Dict[str, float]:
        """precision, recall, F1, IoU = tp/(tp+fp+fn), OA, kappa = (OA - Pe)/(1 - Pe)."""
        tp, fp, tn, fn, n = self.tp, self.fp, self.tn, self.fn, self.total
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        oa = (tp + tn) / n if n else 0.0
        pe = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / (n * n) if n else 0.0
        kappa = (oa - pe) / (1 - pe) if pe < 1 else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "iou": iou, "oa": oa, "kappa": kappa,
                "pixels": n}


@dataclass
class HistogramAUC:
    """ROC-AUC of scores in [0, 1] for separating positives from negatives, accumulated by windows."""

    bins: int = 4096
    positives: np.ndarray = field(default=None)  # type: ignore[assignment]
    negatives: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.positives is None:
            self.positives = np.zeros(self.bins, np.int64)
        if self.negatives is None:
            self.negatives = np.zeros(self.bins, np.int64)

    def update(self, scores: np.ndarray, is_positive: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(is_positive).astype(bool)
        if valid is not None:
            s, y = s[valid], y[valid]
        idx = np.clip((s * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positives += np.bincount(idx[y], minlength=self.bins)
        self.negatives += np.bincount(idx[~y], minlength=self.bins)

    def auc(self) -> Optional[float]:
        """Probability a random positive scores above a random negative (ties count half); None if a class is empty."""
        n_pos, n_neg = self.positives.sum(), self.negatives.sum()
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(self.negatives) - self.negatives  # negatives in lower bins
        wins = (self.positives * below).sum() + 0.5 * (self.positives * self.negatives).sum()
        return float(wins / (n_pos * n_neg))
