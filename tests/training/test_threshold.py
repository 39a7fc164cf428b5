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
    """A forward answering each batch with the probabilities of fixed logits: (B, H, W, 1)."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, x):
        return 1.0 / (1.0 + np.exp(-self.logits[x[:, 0, 0, 0].astype(int)]))


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
    threshold, mcc = choose_threshold(LogitsModel(logits[..., None]), batches(truth), TrainConfig(), tta=False)
    prob = 1.0 / (1.0 + np.exp(-logits))
    assert mcc == np.float64(mcc_at(truth, prob, threshold)) or abs(mcc - mcc_at(truth, prob, threshold)) < 1e-9
    best = max(mcc_at(truth, prob, t) for t in np.unique(prob) - 1e-7)
    assert abs(mcc - best) < 1e-9


def test_a_configured_threshold_is_kept_and_scored():
    truth = np.array([[[0, 1], [1, 255]]], np.uint8)
    logits = np.array([[[-1.0, 0.5], [-0.2, 3.0]]], np.float32)[..., None]  # probabilities .27 .62 .45 (ignored)
    threshold, mcc = choose_threshold(LogitsModel(logits), batches(truth, 1), TrainConfig(threshold=0.4), tta=False)
    assert threshold == 0.4 and mcc == 1.0  # 0.62 and 0.45 above 0.4: both glacier pixels found, no false alarm
    _, mcc_half = choose_threshold(LogitsModel(logits), batches(truth, 1), TrainConfig(threshold=0.5), tta=False)
    assert mcc_half < 1.0


class PixelModel:
    """A forward that is not flip-equivariant: its logit is a fixed map, whatever the view."""

    def __init__(self, logits):
        self.logits = logits
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(x.shape)
        return 1.0 / (1.0 + np.exp(-np.broadcast_to(self.logits, (len(x), *self.logits.shape))))


def test_threshold_is_chosen_on_the_flip_averaged_probabilities_the_product_thresholds():
    rng = np.random.default_rng(1)
    truth = (rng.random((6, 4, 4)) < 0.4).astype(np.uint8)
    logits = rng.normal(0.0, 2.0, (4, 4, 1)).astype(np.float32)
    model = PixelModel(logits)
    val = [(np.zeros((3, 4, 4, 1), np.float32), truth[i][..., None]) for i in (slice(0, 3), slice(3, 6))]
    threshold, mcc = choose_threshold(model, val, TrainConfig())
    p = 1.0 / (1.0 + np.exp(-logits[..., 0]))
    averaged = (p + p[:, ::-1] + p[::-1] + p[::-1, ::-1]) / 4.0  # each view un-flipped, as solution.py does
    prob = np.broadcast_to(averaged, truth.shape)
    best = max(mcc_at(truth, prob, t) for t in np.unique(prob) - 1e-7)
    assert abs(mcc - best) < 1e-9 and abs(mcc - mcc_at(truth, prob, threshold)) < 1e-9
    single = max(mcc_at(truth, np.broadcast_to(p, truth.shape), t) for t in np.unique(p) - 1e-7)
    assert abs(single - best) > 1e-3  # the data tells the two apart, so the test would see a single view
    assert set(model.shapes) == {(3, 4, 4, 1)}  # four passes per batch, each of the batch's own shape
    assert len(model.shapes) == 8
