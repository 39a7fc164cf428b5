"""The binary decision threshold, chosen for MCC on the validation tiles after training."""

from __future__ import annotations

import numpy as np

from keras_glacier.training.config import AUTO, TrainConfig


def validation_probabilities(model, val_seq) -> tuple[np.ndarray, np.ndarray]:
    """Glacier probabilities and labels of every validation pixel (flat; ignored pixels kept)."""
    probs, truths = [], []
    for index in range(len(val_seq)):
        x, y = val_seq[index]
        logits = np.asarray(model.predict_on_batch(x), dtype=np.float32)[..., 0]
        probs.append((1.0 / (1.0 + np.exp(-logits))).ravel())
        truths.append(np.asarray(y)[..., 0].ravel())
    return np.concatenate(probs), np.concatenate(truths).astype(np.uint8)


def _threshold_fallback(truth: np.ndarray, prob: np.ndarray, ignore_index: int = 255) -> tuple[float, float]:
    """LEAD: local stand-in for ``keras_glacier.metrics.best_threshold`` (metrics room); delete on merge.

    Every distinct probability is a candidate; a pixel is glacier when its probability is strictly
    above the threshold, so the threshold is placed halfway between neighbouring probabilities.
    """
    keep = truth != ignore_index
    truth, prob = truth[keep] == 1, prob[keep].astype(np.float64)
    if not truth.size:
        return 0.5, 0.0
    order = np.argsort(-prob, kind="stable")
    prob, truth = prob[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(prob) != 0), prob.size - 1]  # predicted positive: indices <= last
    tp = np.cumsum(truth)[last].astype(np.float64)
    fp = (last + 1) - tp
    positives, total = float(truth.sum()), float(truth.size)
    fn, tn = positives - tp, total - positives - fp
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)
    best = int(np.argmax(mcc))
    below = prob[last[best] + 1] if last[best] + 1 < prob.size else 0.0
    return float((prob[last[best]] + below) / 2), float(mcc[best])


def choose_threshold(model, val_seq, config: TrainConfig) -> tuple[float, float]:
    """The binary decision threshold: the validation-MCC-best one (``auto``) or the configured number."""
    from keras_glacier import metrics

    prob, truth = validation_probabilities(model, val_seq)
    best_threshold = getattr(metrics, "best_threshold", None) or _threshold_fallback
    if config.threshold == AUTO:
        threshold, mcc = best_threshold(truth, prob, ignore_index=255)
        return float(threshold), float(mcc)
    keep = truth != 255
    predicted, actual = prob[keep] > config.threshold, truth[keep] == 1
    tp, fp = float(np.sum(predicted & actual)), float(np.sum(predicted & ~actual))
    fn, tn = float(np.sum(~predicted & actual)), float(np.sum(~predicted & ~actual))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float(config.threshold), float((tp * tn - fp * fn) / denominator) if denominator else 0.0
