"""What every loss shares: label shapes, ignored pixels, class weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)


def label_map(y_true, logits):
    """Labels as float32 with the logits' rank minus one: (B, H, W) for (B, H, W, K) logits.

    Accepts (B, H, W, 1) or (B, H, W) labels of any dtype (uint8 from the data pipeline, float32
    after Keras' conversion), so a loss never depends on whether the pipeline kept the channel axis.
    """
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) == len(logits.shape):
        if y_true.shape[-1] != 1:
            raise ValueError(f"labels of shape {tuple(y_true.shape)} must have one channel (class indices)")
        y_true = y_true[..., 0]
    if len(y_true.shape) != len(logits.shape) - 1:
        raise ValueError(f"labels of shape {tuple(y_true.shape)} do not match logits of shape {tuple(logits.shape)}")
    return y_true


def split_valid(y_true, logits, ignore_index: int):
    """(labels with ignored pixels set to class 0, float32 validity weight, boolean validity)."""
    labels = label_map(y_true, logits)
    valid = ops.not_equal(labels, float(ignore_index))
    return ops.where(valid, labels, 0.0), ops.cast(valid, "float32"), valid


def softmax_inputs(y_true, logits, num_classes: int, ignore_index: int):
    """(softmax probabilities, one-hot truth, valid weight) for (B, H, W, K) logits.

    Probabilities and one-hot rows of ignored pixels are zero; ignored logits are replaced by 0
    before the softmax (with ``where``), so even an infinite logit there gives no NaN value or
    gradient.
    """
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] != num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} channels, the loss expects {num_classes} classes")
    labels, weight, valid = split_valid(y_true, logits, ignore_index)
    logits = ops.where(valid[..., None], logits, 0.0)
    log_prob = ops.log_softmax(logits, axis=-1)
    onehot = ops.one_hot(ops.cast(labels, "int32"), num_classes) * weight[..., None]
    prob = ops.exp(log_prob) * weight[..., None]
    return log_prob, prob, onehot, weight


def check_class_weights(class_weights: Sequence[float] | None, num_classes: int) -> list[float] | None:
    """``class_weights`` as a list of ``num_classes`` finite non-negative floats (not all 0), or None."""
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if len(weights) != num_classes:
        raise ValueError(f"{len(weights)} class weights for {num_classes} classes")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"class weights must be finite, non-negative and not all 0, got {weights}")
    return weights


def weight_vector(class_weights: list[float] | None, num_classes: int):
    return ops.convert_to_tensor(np.asarray(class_weights or [1.0] * num_classes, np.float32))


def auto_class_weights(class_frequencies: Sequence[float]) -> list[float]:
    """Inverse square root of the training class frequencies, normalised to a mean pixel weight of 1.

    ``class_frequencies`` are pixel counts or fractions per class (valid pixels only). With
    ``f_c`` the fractions, ``w_c = f_c ** -0.5 / sum_k(f_k ** 0.5)``, so that ``sum_c f_c w_c = 1``:
    the average weight of a training pixel stays 1, hence the loss keeps its scale and the learning
    rate its meaning. The square root (not the plain inverse) is the usual compromise: a class of
    1% of the pixels weighs 10 times the frequent class rather than 100 times, which lifts rare
    classes without letting a few noisy pixels dominate. A class absent from the training set gets
    weight 0: nothing can be learnt about it, and a weighted Dice term for it would only push its
    probability towards 0.
    """
    counts = np.asarray(class_frequencies, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"class frequencies must be one number per class (at least 2), got {class_frequencies}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(f"class frequencies must be finite, non-negative and not all 0, got {class_frequencies}")
    fractions = counts / counts.sum()
    present = fractions > 0
    weights = np.zeros_like(fractions)
    weights[present] = 1.0 / np.sqrt(fractions[present])
    weights /= np.sum(np.sqrt(fractions[present]))
    return [float(w) for w in weights]


def weighted_class_mean(per_class, class_weights: list[float] | None, num_classes: int, include=None):
    """Mean of a (K,) vector, weighted by the class weights; ``include`` (K,) 0/1 masks classes out."""
    weights = weight_vector(class_weights, num_classes)
    if include is not None:
        weights = weights * include
    return ops.sum(per_class * weights) / ops.maximum(ops.sum(weights), 1e-12)
