"""Training losses on logits, all blind to IGNORE_INDEX pixels and serialisable with the model.

``make_loss(name, task, num_classes, alpha, class_weights)`` is the one place that turns the
``--loss`` choice into a loss object:

========== =================================== ==================================
name       binary head (1 logit)               multiclass head (K logits)
========== =================================== ==================================
bce_dice   alpha * BCE + (1 - alpha) * Dice    alpha * CE + (1 - alpha) * mean Dice
lovasz     Lovasz hinge                        Lovasz softmax (present classes)
focal      focal BCE (gamma 2)                 focal CE (gamma 2)
tversky    Tversky (FP 0.3, FN 0.7)            class-mean Tversky
========== =================================== ==================================
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_glacier.losses.common import auto_class_weights, check_class_weights
from keras_glacier.losses.dice import BceDiceLoss, CeDiceLoss, bce_dice_terms, ce_dice_terms
from keras_glacier.losses.focal import TASKS, FocalLoss, TverskyLoss
from keras_glacier.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad

LOSS_NAMES = ("bce_dice", "lovasz", "focal", "tversky")

__all__ = [
    "LOSS_NAMES", "BceDiceLoss", "CeDiceLoss", "FocalLoss", "LovaszHingeLoss", "LovaszSoftmaxLoss",
    "TverskyLoss", "auto_class_weights", "bce_dice_terms", "ce_dice_terms", "lovasz_grad", "make_loss",
]


def make_loss(
    name: str = "bce_dice",
    task: str = "binary",
    num_classes: int = 2,
    alpha: float | None = None,
    class_weights: Sequence[float] | None = None,
) -> keras.losses.Loss:
    """The loss for ``--loss name`` on a ``task`` model with ``num_classes`` classes (binary: 2).

    ``alpha`` (the cross-entropy share, default 0.5) belongs to ``bce_dice`` only, and giving it
    with another loss is an error rather than a silently ignored setting. ``class_weights`` (one
    per class, e.g. from :func:`auto_class_weights`) are refused by the losses that score a single
    class (binary Lovasz hinge and Tversky). Errors are ``ValueError`` with a one-line message.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "binary" and int(num_classes) != 2:
        raise ValueError(f"the binary task has 2 classes, got {num_classes}")
    if alpha is not None and name != "bce_dice":
        raise ValueError(f"alpha (the cross-entropy share) applies to the bce_dice loss only, not {name}")
    check_class_weights(class_weights, int(num_classes))
    if name == "bce_dice":
        alpha = 0.5 if alpha is None else alpha
        if task == "binary":
            return BceDiceLoss(alpha=alpha, class_weights=class_weights)
        return CeDiceLoss(num_classes, alpha=alpha, class_weights=class_weights)
    if name == "lovasz":
        if task == "binary":
            if class_weights is not None:
                raise ValueError("the binary Lovasz hinge scores one class and takes no class weights")
            return LovaszHingeLoss()
        return LovaszSoftmaxLoss(num_classes, class_weights=class_weights)
    if name == "focal":
        return FocalLoss(task, num_classes, class_weights=class_weights)
    return TverskyLoss(task, num_classes, class_weights=class_weights)
