"""Binary change / detection metrics from one confusion matrix, and a memory-bounded ROC-AUC.

Metrics over a whole data set come from one confusion matrix accumulated over
all its pixels (METHODS.md section 1), not averaged per image. ROC-AUC is
computed from score histograms (`HistogramAUC`), so it can be accumulated
window by window over rasters of any size; with 4096 bins over [0, 1] it
matches the exact rank-based AUC to about 1e-4 when the scores spread over
the range. Scores with a heavy tail (an anomaly detector's: a few pixels
thousands of times the median) crowd the background into a few bins, so
`window_roc` gives the exact ROC instead: it keeps the scores of the rarer
class (the anomalies) in memory and streams the others past them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

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
        # in float64: the int64 products overflow past about 3e9 pixels per class (an AUC of 1.2 was seen)
        positives, negatives = self.positives.astype(np.float64), self.negatives.astype(np.float64)
        below = np.cumsum(negatives) - negatives  # negatives in lower bins
        wins = (positives * below).sum() + 0.5 * (positives * negatives).sum()
        return float(wins / (float(n_pos) * float(n_neg)))


# The most scores of the rarer class `window_roc` keeps in memory (8 bytes each, plus
# 16 bytes of counts): 4 million anomaly pixels is a 2000 x 2000 block, beyond what an
# anomaly reference marks; above it the ROC comes from a histogram and says so.
EXACT_ROC_LIMIT = 4_000_000
ROC_BINS = 1 << 16

Windows = Callable[[], Iterable[Tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Roc:
    """A ROC curve (false-alarm rate ascending, from 0 to 1) with its AUC and class sizes.

    `positive_mean` and `negative_mean` are the classes' mean scores: for scores in
    [0, 1] they are AUC(D,tau) and AUC(F,tau), the areas under the detection and
    false-alarm rates against the threshold. `exact` is False when the ROC comes
    from a `ROC_BINS`-bin histogram (both classes over `EXACT_ROC_LIMIT` pixels).
    """

    false_alarm: np.ndarray
    detection: np.ndarray
    auc: float
    positives: int
    negatives: int
    positive_mean: float
    negative_mean: float
    exact: bool = True


def window_roc(windows: Windows, limit: int = EXACT_ROC_LIMIT) -> Optional[Roc]:
    """The ROC of scores against a binary truth read window by window; None when a class is empty.

    `windows()` returns a new iterable of (scores, is_positive) pairs of 1-D arrays
    (valid pixels only; scores in [0, 1]) each time it is called: it is read two or
    three times. Exact (ties count half, as the rank statistic counts them): the
    rarer class's scores are kept, sorted, and every score of the other class is
    placed among them by binary search. Memory grows with the rarer class only.
    """
    n_pos = n_neg = 0
    sum_pos = sum_neg = 0.0
    kept: Optional[List[np.ndarray]] = []
    for scores, positive in windows():  # pass 1: class sizes and means; the positives kept while few
        pos = scores[positive]
        pos_sum = float(pos.sum())
        n_pos += len(pos)
        n_neg += len(scores) - len(pos)
        sum_pos += pos_sum
        sum_neg += float(scores.sum()) - pos_sum
        if kept is not None and n_pos <= limit:
            kept.append(pos)
        else:
            kept = None
    if n_pos == 0 or n_neg == 0:
        return None
    means = (sum_pos / n_pos, sum_neg / n_neg)
    if kept is not None and n_pos <= n_neg:
        pf, pd = _exact_curve(np.sort(np.concatenate(kept)), (s[~p] for s, p in windows()), stored_positive=True)
    elif n_neg <= limit:
        stored = np.sort(np.concatenate([s[~p] for s, p in windows()]))
        pf, pd = _exact_curve(stored, (s[p] for s, p in windows()), stored_positive=False)
    else:
        counts = HistogramAUC(bins=ROC_BINS)
        for scores, positive in windows():
            counts.update(scores, positive)
        pd = np.concatenate([[0.0], np.cumsum(counts.positives[::-1]) / n_pos])
        pf = np.concatenate([[0.0], np.cumsum(counts.negatives[::-1]) / n_neg])
        return Roc(pf, pd, float(counts.auc()), n_pos, n_neg, *means, exact=False)
    return Roc(pf, pd, _area(pf, pd), n_pos, n_neg, *means)


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The exact ROC AUC (ties count half) of scores held in memory, any range; NaN when a class is empty."""
    roc = window_roc(lambda: [(np.asarray(scores, np.float64), np.asarray(positive, bool))], limit=len(scores))
    return roc.auc if roc is not None else float("nan")


def _exact_curve(stored: np.ndarray, streamed: Iterable[np.ndarray], stored_positive: bool
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """(false-alarm, detection) rates at every threshold, from the sorted scores of one class and the other's.

    Each streamed score v is counted by how many stored scores lie below it
    (l = #stored < v) and at or below it (r = #stored <= v). At a threshold equal
    to a distinct stored value u (first index f, last e): #stored >= u is m - f,
    #stored > u is m - e - 1, #streamed >= u counts r >= f + 1 and #streamed > u
    counts l >= e + 1. Sweeping u downwards, each u gives two points (above u,
    then at u): the runs of streamed scores between stored values and the ties
    at u (a diagonal step, which the trapezoid area counts half).
    """
    m = len(stored)
    below = np.zeros(m + 2, np.int64)  # below[k]: streamed scores with exactly k stored scores < them
    at_or_below = np.zeros(m + 2, np.int64)
    total = 0
    for values in streamed:
        total += len(values)
        for counts, side in ((below, "left"), (at_or_below, "right")):
            index, count = np.unique(np.searchsorted(stored, values, side=side), return_counts=True)
            counts[index] += count
    _, first = np.unique(stored, return_index=True)
    last = np.append(first[1:], m) - 1
    beyond_below = np.cumsum(below[::-1])[::-1]  # beyond_below[k]: streamed scores with >= k stored below them
    beyond_at = np.cumsum(at_or_below[::-1])[::-1]
    order = slice(None, None, -1)  # the thresholds from the highest stored value down
    stored_gt, stored_ge = (m - last - 1)[order], (m - first)[order]
    streamed_gt, streamed_ge = beyond_below[last + 1][order], beyond_at[first + 1][order]
    stored_rate = np.concatenate([[0], np.column_stack([stored_gt, stored_ge]).ravel(), [m]]) / m
    streamed_rate = np.concatenate([[0], np.column_stack([streamed_gt, streamed_ge]).ravel(), [total]]) / total
    if stored_positive:
        return streamed_rate, stored_rate
    return stored_rate, streamed_rate


def _area(false_alarm: np.ndarray, detection: np.ndarray) -> float:
    """The trapezoid area under a ROC polyline (exact for a step curve with diagonal ties)."""
    return float(np.sum(np.diff(false_alarm) * (detection[1:] + detection[:-1]) / 2))
