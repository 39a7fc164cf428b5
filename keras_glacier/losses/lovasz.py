"""Lovasz hinge (binary) and Lovasz softmax (K classes): IoU surrogates for thin, rare classes.

Berman, Triki & Blaschko, "The Lovasz-Softmax loss" (CVPR 2018): sorting the pixel errors and
weighting them by the discrete gradient of the Jaccard loss gives a convex surrogate of 1 - IoU,
which rewards getting a small debris patch right as much as a large background area. Both are
computed over all valid pixels of the batch together (the paper's ``per_image=False``), like the
Dice terms, so an image without a class does not add a meaningless term. Ignored pixels cannot be
dropped under jit (static shapes), so they are sorted last with error 0: the Jaccard gradient at
a position depends only on the pixels sorted before it, hence they change nothing.
"""

from __future__ import annotations

import keras
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.losses.common import check_class_weights, softmax_inputs, split_valid, weighted_class_mean


def lovasz_grad(gt_sorted):
    """Gradient of the Jaccard loss with respect to sorted errors, along axis 0 (paper's Alg. 1)."""
    gts = ops.sum(gt_sorted, axis=0, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=0)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=0)
    jaccard = 1.0 - intersection / union  # union >= 1 at every position
    return ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)


def _sorted_dot(errors, gt, valid):
    """sum over positions of errors sorted in decreasing order times lovasz_grad(gt in that order).

    ``errors``, ``gt``: (N, C) columns handled independently; ``valid``: (N, 1) bool.
    """
    key = ops.where(valid, errors, -1.0)  # errors are >= 0 where they count, so ignored ones sort last
    order = ops.argsort(-key, axis=0)
    errors_sorted = ops.take_along_axis(ops.where(valid, errors, 0.0), order, axis=0)
    gt_sorted = ops.take_along_axis(gt, order, axis=0)
    grad = ops.stop_gradient(lovasz_grad(gt_sorted))
    return ops.sum(errors_sorted * grad, axis=0)


@keras.saving.register_keras_serializable(package="keras_glacier")
class LovaszHingeLoss(keras.losses.Loss):
    """Binary Lovasz hinge on one logit per pixel: ``sum_i relu(1 - x_i s_i)_sorted * grad_i``, s = +-1."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, name: str = "lovasz_hinge",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        if logits.shape[-1] != 1:
            raise ValueError(f"the Lovasz hinge takes one logit per pixel, got shape {tuple(logits.shape)}")
        labels, _, valid = split_valid(y_true, logits, self.ignore_index)
        logits = ops.where(valid, logits[..., 0], 0.0)
        signs = 2.0 * labels - 1.0
        errors = ops.relu(1.0 - logits * signs)
        column = (-1, 1)
        return _sorted_dot(ops.reshape(errors, column), ops.reshape(labels, column), ops.reshape(valid, column))[0]

    def get_config(self):
        config = super().get_config()
        config.update(ignore_index=self.ignore_index)
        return config


@keras.saving.register_keras_serializable(package="keras_glacier")
class LovaszSoftmaxLoss(keras.losses.Loss):
    """Lovasz softmax on (B, H, W, K) logits: the mean over classes present in the batch's truth.

    Per class c the errors are ``|[y = c] - p_c|``; classes without a true pixel in the batch are
    left out of the mean (the paper's ``classes="present"``), which is weighted by the class weights.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, class_weights=None,
                 name: str = "lovasz_softmax", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_weights = check_class_weights(class_weights, self.num_classes)

    def call(self, y_true, y_pred):
        _, prob, onehot, weight = softmax_inputs(y_true, y_pred, self.num_classes, self.ignore_index)
        k = self.num_classes
        prob, onehot = ops.reshape(prob, (-1, k)), ops.reshape(onehot, (-1, k))
        valid = ops.reshape(ops.greater(weight, 0.0), (-1, 1))
        per_class = _sorted_dot(ops.abs(onehot - prob), onehot, valid)
        present = ops.cast(ops.greater(ops.sum(onehot, axis=0), 0.0), "float32")
        return weighted_class_mean(per_class, self.class_weights, k, include=present)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_index=self.ignore_index,
                      class_weights=self.class_weights)
        return config
