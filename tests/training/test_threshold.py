"""The decision threshold chosen for MCC (the local stand-in for keras_glacier.metrics.best_threshold)."""

from __future__ import annotations

import numpy as np

from keras_glacier.training.threshold import _threshold_fallback


def mcc_at(truth, prob, threshold):
    keep = truth != 255
    p, t = prob[keep] > threshold, truth[keep] == 1
    tp, fp, fn, tn = (float(np.sum(a & b)) for a, b in ((p, t), (p, ~t), (~p, t), (~p, ~t)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def test_chosen_threshold_is_the_best_of_every_cut():
    rng = np.random.default_rng(0)
    truth = (rng.random(400) < 0.3).astype(np.uint8)
    prob = np.clip(0.25 * truth + rng.random(400) * 0.75, 0, 1).round(3)  # ties included
    truth[:20] = 255  # ignored pixels count for nothing, whatever their probability
    prob[:20] = 0.999
    threshold, mcc = _threshold_fallback(truth, prob)
    assert mcc == np.float64(mcc_at(truth, prob, threshold))
    best = max(mcc_at(truth, prob, t) for t in np.unique(prob) - 1e-9)
    assert abs(mcc - best) < 1e-12 and mcc > mcc_at(truth, prob, 0.5)
