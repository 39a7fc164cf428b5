"""The binary decision threshold that maximises the whole-set MCC (issue 13, item 3)."""

from __future__ import annotations

import numpy as np

from keras_glacier.constants import IGNORE_INDEX

DEFAULT_THRESHOLD = 0.5


def _mcc(tp, fp, tn, fn):
    """Vectorised binary MCC in float64 (0 where undefined, as scikit-learn)."""
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    den = np.sqrt((tp + fp) * (tp + fn)) * np.sqrt((tn + fp) * (tn + fn))
    return np.divide(tp * tn - fp * fn, den, out=np.zeros_like(den), where=den > 0)


def best_threshold(truth, prob, ignore_index: int = IGNORE_INDEX) -> tuple[float, float]:
    """``(threshold, mcc)``: the threshold ``t`` whose decision ``prob > t`` maximises the MCC over all
    valid pixels together (the validation set as one pool, like the training metrics).

    ``truth``: 0/1/``ignore_index`` and ``prob``: probabilities, both arrays of one shape or equally
    long sequences of per-tile arrays (tiles may differ in size). Sorting the probabilities (all, and
    those of glacier pixels) and counting below each distinct value give the confusion counts of every possible split in
    O(n log n), so a whole validation set (millions of pixels) takes well under a second. The
    returned threshold lies half-way between the two distinct probabilities that the best split
    separates, the margin that generalises best. Ties (including "nothing beats 0.5", e.g. no
    glacier at all) go to the split nearest 0.5, and 0.5 itself is returned when no split scores
    higher than it. Returns ``(0.5, 0.0)`` when there is no valid pixel.
    """
    if isinstance(truth, (list, tuple)):
        if len(truth) != len(prob):
            raise ValueError(f"{len(truth)} truth arrays but {len(prob)} probability arrays")
        pairs = [(np.asarray(t), np.asarray(p)) for t, p in zip(truth, prob)]
    else:
        pairs = [(np.asarray(truth), np.asarray(prob))]
    truths, probs = [], []
    for index, (t, p) in enumerate(pairs):
        if t.shape != p.shape:
            raise ValueError(f"array {index}: truth shape {t.shape} differs from probability shape {p.shape}")
        valid = t != ignore_index
        truths.append(t[valid].ravel() == 1)
        probs.append(p[valid].ravel().astype(np.float64))
    positive = np.concatenate(truths) if truths else np.zeros(0, bool)
    values = np.concatenate(probs) if probs else np.zeros(0)
    if values.size == 0:
        return DEFAULT_THRESHOLD, 0.0
    if not np.isfinite(values).all():
        raise ValueError("probabilities contain NaN/inf")
    ordered = np.sort(values)
    ordered_pos = np.sort(values[positive])
    first = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))  # values below each
    distinct = ordered[first]
    total_pos, total = ordered_pos.size, ordered.size
    # Split i (i = 0..m): predict glacier for the values distinct[i:], i.e. t in [distinct[i-1], distinct[i]).
    pos_below = np.append(np.searchsorted(ordered_pos, distinct, side="left"), total_pos).astype(np.float64)
    all_below = np.append(first, total).astype(np.float64)
    tp = total_pos - pos_below
    fp = (total - all_below) - tp
    fn = pos_below
    tn = all_below - pos_below
    scores = _mcc(tp, fp, tn, fn)
    lower = np.concatenate([[-np.inf], distinct])  # threshold range of split i: [lower[i], upper[i])
    upper = np.concatenate([distinct, [np.inf]])
    at_half = int(np.searchsorted(distinct, DEFAULT_THRESHOLD, side="right"))  # prob > 0.5 <=> split at_half
    best = scores.max()
    if best <= scores[at_half]:
        return DEFAULT_THRESHOLD, float(scores[at_half])
    # Split 0 ("everything is glacier") scores 0 like split m ("nothing is"), so it is never needed.
    candidates = np.flatnonzero(scores[1:] == best) + 1
    midpoints = np.where(np.isfinite(upper[candidates]), (lower[candidates] + upper[candidates]) / 2,
                         lower[candidates])
    chosen = candidates[int(np.argmin(np.abs(midpoints - DEFAULT_THRESHOLD)))]
    threshold = float(midpoints[candidates == chosen][0])
    if not lower[chosen] < np.float32(threshold) < upper[chosen]:
        # Neighbours one float32 step apart: the midpoint may round onto one of them in float32
        # (as a Keras metric compares), while the lower value itself separates exactly.
        threshold = float(lower[chosen])
    return threshold, float(best)
