"""The decision threshold chosen after training: validation logits -> probabilities -> best MCC cut."""

from __future__ import annotations

import numpy as np

from keras_glacier.training.config import TrainConfig
from keras_glacier.training.threshold import choose_threshold


def mcc_at(truth, prob, threshold):
    keep = truth != 255
    p, t = prob[keep] > threshold, truth[keep] == 1
    tp, fp, fn, tn = (float(np.sum(a & b)) for a, b in ((p, t), (p, ~t), (~p, t), (~p, ~t)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


class LogitsModel:
    """Answers each batch with fixed logits, as model.predict_on_batch does: (B, H, W, 1)."""

    def __init__(self, logits):
        self.logits = logits

    def predict_on_batch(self, x):
        return self.logits[x[:, 0, 0, 0].astype(int)]


def batches(truth, n_batches=3):
    """(x, y) batches whose x names the tile index, so the model can look its logits up."""
    tiles = np.arange(len(truth))
    return [(np.broadcast_to(i[:, None, None, None], (len(i), 2, 2, 1)).astype(np.float32), truth[i][..., None])
            for i in np.array_split(tiles, n_batches)]


def test_chosen_threshold_is_the_best_cut_of_the_validation_probabilities():
    rng = np.random.default_rng(0)
    truth = (rng.random((12, 2, 2)) < 0.3).astype(np.uint8)
    logits = (2.0 * truth + rng.normal(0.0, 1.5, truth.shape)).astype(np.float32)
    truth[0] = 255  # ignored pixels count for nothing, whatever their probability
    logits[0] = 9.0
    threshold, mcc = choose_threshold(LogitsModel(logits[..., None]), batches(truth), TrainConfig())
    prob = 1.0 / (1.0 + np.exp(-logits))
    assert mcc == np.float64(mcc_at(truth, prob, threshold)) or abs(mcc - mcc_at(truth, prob, threshold)) < 1e-9
    best = max(mcc_at(truth, prob, t) for t in np.unique(prob) - 1e-7)
    assert abs(mcc - best) < 1e-9


def test_a_configured_threshold_is_kept_and_scored():
    truth = np.array([[[0, 1], [1, 255]]], np.uint8)
    logits = np.array([[[-1.0, 0.5], [-0.2, 3.0]]], np.float32)[..., None]  # probabilities .27 .62 .45 (ignored)
    threshold, mcc = choose_threshold(LogitsModel(logits), batches(truth, 1), TrainConfig(threshold=0.4))
    assert threshold == 0.4 and mcc == 1.0  # 0.62 and 0.45 above 0.4: both glacier pixels found, no false alarm
    _, mcc_half = choose_threshold(LogitsModel(logits), batches(truth, 1), TrainConfig(threshold=0.5))
    assert mcc_half < 1.0
