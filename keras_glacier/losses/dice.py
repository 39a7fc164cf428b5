"""Cross-entropy plus soft Dice: the default loss, binary (BCE) and K-class (softmax CE)."""

from __future__ import annotations

import keras
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.losses.common import (
    check_class_weights,
    softmax_inputs,
    weight_vector,
    weighted_class_mean,
)


def _binary_inputs(y_true, logits, ignore_index):
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) == len(logits.shape) - 1:
        y_true = y_true[..., None]
    valid = ops.not_equal(y_true, float(ignore_index))
    return logits, ops.where(valid, y_true, ops.zeros_like(y_true)), valid


def bce_dice_terms(y_true, logits, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0, class_weights=None):
    """Returns (masked mean BCE, soft Dice loss) over the whole batch, computed in float32.

    BCE uses the log-sigmoid identity ``max(x, 0) - x*y + log1p(exp(-|x|))``, which stays finite for
    any logit. Dice is computed over all valid pixels of the batch together (not per image), so tiles
    without glacier do not each contribute a meaningless 0/0 ratio. ``class_weights``
    ``[background, glacier]`` weigh each pixel's BCE by its true class (a weighted mean, as in
    PyTorch's ``cross_entropy``); Dice has one class and no weight.
    """
    logits, target, valid = _binary_inputs(y_true, logits, ignore_index)
    weight = ops.cast(valid, "float32")
    if class_weights is not None:
        background, glacier = check_class_weights(class_weights, 2)
        weight = weight * (background + (glacier - background) * target)

    bce = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
    # where (not a product with the weight) so that even an infinite logit on an ignored pixel
    # contributes an exact 0 instead of inf * 0 = NaN.
    bce = ops.sum(ops.where(valid, bce * weight, 0.0)) / ops.maximum(ops.sum(weight), 1e-12 if class_weights else 1.0)

    prob = ops.where(valid, ops.sigmoid(logits), 0.0)
    intersection = ops.sum(prob * target)
    denominator = ops.sum(prob) + ops.sum(target)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return bce, dice


def ce_dice_terms(y_true, logits, num_classes: int, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0,
                  class_weights=None):
    """(weighted mean softmax cross-entropy, class-mean soft Dice loss) of (B, H, W, K) logits.

    Cross-entropy: ``sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]`` over valid pixels (PyTorch's
    weighted mean). Dice: per class ``1 - (2 sum p_c t_c + s) / (sum p_c + sum t_c + s)`` over the
    whole batch, then the mean over classes weighted by the class weights (plain mean without).
    """
    log_prob, prob, onehot, valid = softmax_inputs(y_true, logits, num_classes, ignore_index)
    weights = weight_vector(class_weights, num_classes)
    pixel_weight = ops.sum(onehot * weights, axis=-1)  # w[y] on valid pixels, 0 on ignored ones
    nll = -ops.sum(onehot * log_prob, axis=-1)
    ce = ops.sum(nll * pixel_weight) / ops.maximum(ops.sum(pixel_weight), 1e-12 if class_weights else 1.0)
    axes = tuple(range(len(prob.shape) - 1))
    intersection = ops.sum(prob * onehot, axis=axes)
    denominator = ops.sum(prob, axis=axes) + ops.sum(onehot, axis=axes)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return ce, weighted_class_mean(dice, class_weights, num_classes)


@keras.saving.register_keras_serializable(package="keras_glacier")
class BceDiceLoss(keras.losses.Loss):
    """``alpha * BCE + (1 - alpha) * Dice`` on logits; pixels labelled ``ignore_index`` weigh 0.

    The value is already a batch-level scalar (Dice is not a per-pixel mean), so Keras' reduction
    leaves it unchanged.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        smooth: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights=None,
        name: str = "bce_dice",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.smooth = float(smooth)
        self.ignore_index = int(ignore_index)
        self.class_weights = check_class_weights(class_weights, 2)

    def call(self, y_true, y_pred):
        bce, dice = bce_dice_terms(y_true, y_pred, self.ignore_index, self.smooth, self.class_weights)
        return self.alpha * bce + (1.0 - self.alpha) * dice

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, smooth=self.smooth, ignore_index=self.ignore_index,
                      class_weights=self.class_weights)
        return config


@keras.saving.register_keras_serializable(package="keras_glacier")
class CeDiceLoss(keras.losses.Loss):
    """``alpha * cross-entropy + (1 - alpha) * soft Dice`` of K-class logits (see :func:`ce_dice_terms`)."""

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        smooth: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights=None,
        name: str = "ce_dice",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.smooth = float(smooth)
        self.ignore_index = int(ignore_index)
        self.class_weights = check_class_weights(class_weights, self.num_classes)

    def call(self, y_true, y_pred):
        ce, dice = ce_dice_terms(y_true, y_pred, self.num_classes, self.ignore_index, self.smooth, self.class_weights)
        return self.alpha * ce + (1.0 - self.alpha) * dice

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, alpha=self.alpha, smooth=self.smooth,
                      ignore_index=self.ignore_index, class_weights=self.class_weights)
        return config
