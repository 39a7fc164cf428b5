"""The binary decision threshold, chosen for MCC on the validation tiles after training.

The threshold is applied by ``predict``, the Segmenter and ``solution.py`` to probabilities averaged
over the four flip views (TTA is on by default there), and averaging pulls probabilities towards the
middle, so it is chosen on those same averaged probabilities: a cut fitted to single-view
probabilities would sit at the wrong place for what the product thresholds.
"""

from __future__ import annotations

import numpy as np

from keras_glacier.shared import shared
from keras_glacier.training.config import AUTO, TrainConfig


def validation_probabilities(forward, val_seq, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Glacier probabilities and labels of every validation pixel (flat; ignored pixels kept).

    ``forward``: a ``solution.Forward`` giving probabilities, for a Keras model
    ``inference.keras_forward(model)``, the one predict and the Segmenter use. ``tta``: average over
    solution.py's four flip views, each view one pass of the batch's own shape.
    """
    probs, truths = [], []
    for index in range(len(val_seq)):
        x, y = val_seq[index]
        x = np.asarray(x, dtype=np.float32)
        prob = shared("_predict_batch", forward, x, 4 if tta else 1, len(x))
        probs.append(prob[..., 0].ravel())
        truths.append(np.asarray(y)[..., 0].ravel())
    return np.concatenate(probs), np.concatenate(truths).astype(np.uint8)


def choose_threshold(forward, val_seq, config: TrainConfig, tta: bool = True) -> tuple[float, float]:
    """The binary decision threshold: the validation-MCC-best one (``auto``) or the configured number.

    Scored on flip-averaged probabilities (``tta``) of ``forward``, as the threshold is used (module docstring).
    """
    from keras_glacier.metrics import best_threshold

    prob, truth = validation_probabilities(forward, val_seq, tta)
    if config.threshold == AUTO:
        threshold, mcc = best_threshold(truth, prob, ignore_index=255)
        return float(threshold), float(mcc)
    keep = truth != 255
    predicted, actual = prob[keep] > config.threshold, truth[keep] == 1
    tp, fp = float(np.sum(predicted & actual)), float(np.sum(predicted & ~actual))
    fn, tn = float(np.sum(~predicted & actual)), float(np.sum(~predicted & ~actual))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float(config.threshold), float((tp * tn - fp * fn) / denominator) if denominator else 0.0
