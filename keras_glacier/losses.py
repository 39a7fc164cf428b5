"""Training loss: binary cross-entropy plus soft Dice, both blind to IGNORE_INDEX pixels."""

from __future__ import annotations

import keras
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX


def bce_dice_terms(y_true, logits, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0):
    """Returns (masked mean BCE, soft Dice loss) over the whole batch, computed in float32.

    BCE uses the log-sigmoid identity ``max(x, 0) - x*y + log1p(exp(-|x|))``, which stays finite for
    any logit. Dice is computed over all valid pixels of the batch together (not per image), so tiles
    without glacier do not each contribute a meaningless 0/0 ratio.
    """
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "float32")
    valid = ops.not_equal(y_true, float(ignore_index))
    weight = ops.cast(valid, "float32")
    target = ops.where(valid, y_true, ops.zeros_like(y_true))

    bce = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
    # where (not a product with the weight) so that even an infinite logit on an ignored pixel
    # contributes an exact 0 instead of inf * 0 = NaN.
    bce = ops.sum(ops.where(valid, bce, 0.0)) / ops.maximum(ops.sum(weight), 1.0)

    prob = ops.where(valid, ops.sigmoid(logits), 0.0)
    intersection = ops.sum(prob * target)
    denominator = ops.sum(prob) + ops.sum(target)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return bce, dice


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

    def call(self, y_true, y_pred):
        bce, dice = bce_dice_terms(y_true, y_pred, self.ignore_index, self.smooth)
        return self.alpha * bce + (1.0 - self.alpha) * dice

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, smooth=self.smooth, ignore_index=self.ignore_index)
        return config
