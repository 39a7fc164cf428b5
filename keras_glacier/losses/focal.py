"""Focal and Tversky losses: two other answers to rare classes, for ``--loss focal|tversky``.

Focal (Lin et al. 2017) down-weighs pixels already classified with confidence by ``(1 - p_t)**gamma``,
so the many easy background pixels stop dominating the gradient. Tversky (Salehi et al. 2017)
generalises Dice with separate weights for false positives and false negatives; weighting misses
more than false alarms (0.3 / 0.7, the paper's choice) trades precision for recall on thin classes.
Both work on the binary head (one logit, sigmoid) and on the K-class head (softmax).
"""

from __future__ import annotations

import keras
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.losses.common import (
    check_class_weights,
    softmax_inputs,
    split_valid,
    weight_vector,
    weighted_class_mean,
)

TASKS = ("binary", "multiclass")


def _check_task(task: str, num_classes: int) -> tuple[str, int]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    num_classes = int(num_classes)
    if (task == "binary" and num_classes != 2) or num_classes < 2:
        raise ValueError(f"{task} task with {num_classes} classes (binary has exactly 2)")
    return task, num_classes


def _binary_probabilities(y_true, y_pred, ignore_index):
    """(glacier probability, log p, log(1 - p), 0/1 target, valid weight), flattened per pixel."""
    logits = ops.cast(y_pred, "float32")
    if logits.shape[-1] != 1:
        raise ValueError(f"a binary loss takes one logit per pixel, got shape {tuple(logits.shape)}")
    target, weight, valid = split_valid(y_true, logits, ignore_index)
    logits = ops.where(valid, logits[..., 0], 0.0)
    return ops.sigmoid(logits), ops.log_sigmoid(logits), ops.log_sigmoid(-logits), target, weight


class _TaskLoss(keras.losses.Loss):
    def __init__(self, task, num_classes, ignore_index, class_weights, name, reduction, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.task, self.num_classes = _check_task(task, num_classes)
        self.ignore_index = int(ignore_index)
        self.class_weights = check_class_weights(class_weights, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(task=self.task, num_classes=self.num_classes, ignore_index=self.ignore_index,
                      class_weights=self.class_weights)
        return config


@keras.saving.register_keras_serializable(package="keras_glacier")
class FocalLoss(_TaskLoss):
    """``sum_i w[y_i] (1 - p_i[y_i])**gamma * -log p_i[y_i] / sum_i w[y_i]`` over valid pixels."""

    def __init__(self, task: str = "binary", num_classes: int = 2, gamma: float = 2.0,
                 ignore_index: int = IGNORE_INDEX, class_weights=None, name: str = "focal",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(task, num_classes, ignore_index, class_weights, name, reduction, dtype)
        if not float(gamma) >= 0.0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        weights = weight_vector(self.class_weights, self.num_classes)
        if self.task == "binary":
            _, log_p, log_q, target, valid = _binary_probabilities(y_true, y_pred, self.ignore_index)
            log_pt = target * log_p + (1.0 - target) * log_q
            pixel_weight = valid * (weights[0] + (weights[1] - weights[0]) * target)
        else:
            log_prob, _, onehot, _ = softmax_inputs(y_true, y_pred, self.num_classes, self.ignore_index)
            log_pt = ops.sum(onehot * log_prob, axis=-1)
            pixel_weight = ops.sum(onehot * weights, axis=-1)
        modulation = ops.power(ops.maximum(1.0 - ops.exp(log_pt), 0.0), self.gamma)
        total = ops.sum(pixel_weight * modulation * -log_pt)
        floor = 1e-12 if self.class_weights else 1.0
        return total / ops.maximum(ops.sum(pixel_weight), floor)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma)
        return config


@keras.saving.register_keras_serializable(package="keras_glacier")
class TverskyLoss(_TaskLoss):
    """``1 - (TP + s) / (TP + a FP + b FN + s)`` with soft counts over the batch's valid pixels.

    Binary: of the glacier class. K classes: per class, then the mean weighted by the class weights.
    """

    def __init__(self, task: str = "binary", num_classes: int = 2, fp_weight: float = 0.3,
                 fn_weight: float = 0.7, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 class_weights=None, name: str = "tversky", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(task, num_classes, ignore_index, class_weights, name, reduction, dtype)
        if task == "binary" and class_weights is not None:
            raise ValueError("the binary Tversky loss scores one class and takes no class weights")
        if float(fp_weight) < 0 or float(fn_weight) < 0:
            raise ValueError(f"Tversky weights must be >= 0, got {fp_weight}, {fn_weight}")
        self.fp_weight, self.fn_weight, self.smooth = float(fp_weight), float(fn_weight), float(smooth)

    def call(self, y_true, y_pred):
        if self.task == "binary":
            prob, _, _, target, valid = _binary_probabilities(y_true, y_pred, self.ignore_index)
            prob, target = prob * valid, target * valid
            axes = None
        else:
            _, prob, target, _ = softmax_inputs(y_true, y_pred, self.num_classes, self.ignore_index)
            axes = tuple(range(len(prob.shape) - 1))
        tp = ops.sum(prob * target, axis=axes)
        fp = ops.sum(prob * (1.0 - target), axis=axes) if axes is None else ops.sum(prob, axis=axes) - tp
        fn = ops.sum((1.0 - prob) * target, axis=axes) if axes is None else ops.sum(target, axis=axes) - tp
        loss = 1.0 - (tp + self.smooth) / (tp + self.fp_weight * fp + self.fn_weight * fn + self.smooth)
        if self.task == "binary":
            return loss
        return weighted_class_mean(loss, self.class_weights, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(fp_weight=self.fp_weight, fn_weight=self.fn_weight, smooth=self.smooth)
        return config
