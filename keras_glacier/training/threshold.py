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


def choose_threshold(model, val_seq, config: TrainConfig) -> tuple[float, float]:
    """The binary decision threshold: the validation-MCC-best one (``auto``) or the configured number."""
    from keras_glacier.metrics import best_threshold

    prob, truth = validation_probabilities(model, val_seq)
    if config.threshold == AUTO:
        threshold, mcc = best_threshold(truth, prob, ignore_index=255)
        return float(threshold), float(mcc)
    keep = truth != 255
    predicted, actual = prob[keep] > config.threshold, truth[keep] == 1
    tp, fp = float(np.sum(predicted & actual)), float(np.sum(predicted & ~actual))
    fn, tn = float(np.sum(~predicted & actual)), float(np.sum(~predicted & ~actual))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float(config.threshold), float((tp * tn - fp * fn) / denominator) if denominator else 0.0
