"""K-class scores from one K x K confusion matrix over a whole data set, as Keras metrics and numpy.

Rows are the true class, columns the predicted class (the argmax of the logits), ignored pixels
(IGNORE_INDEX) are left out. Every score comes from the matrix summed over *all* validation pixels,
so the numbers equal scikit-learn's on the concatenated pixels:

* MCC: the K-class generalisation (Gorodkin 2004) that ``sklearn.metrics.matthews_corrcoef``
  computes, ``(c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))`` with ``c`` the trace, ``s`` the total,
  ``t`` and ``p`` the true and predicted counts per class; 0 when the denominator is 0.
* per class: IoU, F1, precision, recall (``zero_division=0``) and the support (true pixels).
* mean IoU: over the classes that occur in the truth or the prediction (a class absent from both
  has no IoU, as in ``keras.metrics.MeanIoU``); 0 when there is none.

Counts are kept as two int32 words per cell, exact up to 2**55 pixels (see ``metrics.binary``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.metrics.binary import _WORD, _safe_div

PER_CLASS_SCORES = ("iou", "f1", "precision", "recall")


def confusion_matrix(truth, pred, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 counts of (true class, predicted class) over pixels whose truth is not ignored.

    ``truth`` and ``pred`` are class indices of any matching shape; a value outside 0..K-1 (other
    than an ignored truth) is a ValueError, since silently dropping pixels would change every score.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    valid = truth != ignore_index
    t = truth[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    for name, values in (("truth", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = np.unique(values[(values < 0) | (values >= num_classes)])[:5].tolist()
            raise ValueError(f"{name} has class values {bad} outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def multiclass_mcc(matrix) -> float:
    """scikit-learn's K-class Matthews correlation of a confusion matrix (float64, 0 if undefined)."""
    m = np.asarray(matrix, dtype=np.float64)
    t, p = m.sum(axis=1), m.sum(axis=0)
    c, s = np.trace(m), m.sum()
    cov_tp = c * s - np.dot(t, p)
    cov_pp = s * s - np.dot(p, p)
    cov_tt = s * s - np.dot(t, t)
    den = cov_tt * cov_pp
    return float(cov_tp / np.sqrt(den)) if den > 0 else 0.0


def class_scores(matrix) -> dict[str, np.ndarray]:
    """Per-class IoU, F1, precision, recall ((K,) float64, 0 where undefined) and support (int64)."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    fp, fn = m.sum(axis=0) - tp, m.sum(axis=1) - tp

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return {
        "iou": ratio(tp, tp + fp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "support": np.asarray(matrix).sum(axis=1).astype(np.int64),
    }


def mean_iou(matrix) -> float:
    m = np.asarray(matrix, dtype=np.float64)
    present = (m.sum(axis=0) + m.sum(axis=1)) > 0
    return float(class_scores(m)["iou"][present].mean()) if present.any() else 0.0


def multiclass_scores(matrix, class_names: Sequence[str] | None = None) -> dict:
    """``{"mcc", "mean_iou", "accuracy", "per_class": {name: {iou, f1, precision, recall, support}}}``."""
    m = np.asarray(matrix)
    k = m.shape[0]
    names = [f"class_{i}" for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if m.shape != (k, k) or len(names) != k:
        raise ValueError(f"confusion matrix of shape {m.shape} for {len(names)} class names")
    per = class_scores(m)
    total = int(m.sum())
    return {
        "mcc": multiclass_mcc(m),
        "mean_iou": mean_iou(m),
        "accuracy": float(np.trace(m)) / total if total else 0.0,
        "per_class": {
            name: {**{s: float(per[s][i]) for s in PER_CLASS_SCORES}, "support": int(per["support"][i])}
            for i, name in enumerate(names)
        },
    }


class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates the K x K matrix across batches; subclasses choose the score ``result`` returns.

    ``y_true``: class indices (B, H, W) or (B, H, W, 1), IGNORE_INDEX left out; ``y_pred``: (B, H, W, K)
    logits or probabilities (the argmax is the same). Each image's matrix is a float32 one-hot
    product (exact below 2**24 pixels per image) added to the int32 word pair.
    """

    score: str = ""

    def __init__(self, num_classes: int, name: str | None = None, ignore_index: int = IGNORE_INDEX, dtype=None):
        super().__init__(name=name or self.score, dtype=dtype)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        shape = (self.num_classes, self.num_classes)
        self.matrix_low = self.add_variable(shape=shape, initializer="zeros", dtype="int32", name="matrix_low")
        self.matrix_high = self.add_variable(shape=shape, initializer="zeros", dtype="int32", name="matrix_high")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"metric '{self.name}' does not take sample weights; label pixels {self.ignore_index} to leave them out"
            )
        k = self.num_classes
        if y_pred.shape[-1] != k:
            raise ValueError(f"metric '{self.name}' expects {k} class channels, got shape {tuple(y_pred.shape)}")
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = y_true[..., 0]
        valid = ops.cast(ops.not_equal(y_true, float(self.ignore_index)), "float32")
        truth = ops.one_hot(ops.cast(ops.where(valid > 0, y_true, 0.0), "int32"), k) * valid[..., None]
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), k)
        batch = ops.shape(truth)[0]
        truth = ops.reshape(truth, (batch, -1, k))
        pred = ops.reshape(pred, (batch, -1, k))
        per_image = ops.einsum("bnk,bnl->bkl", truth, pred)
        low = self.matrix_low + ops.sum(ops.cast(ops.round(per_image), "int32"), axis=0)
        self.matrix_high.assign(self.matrix_high + low // _WORD)
        self.matrix_low.assign(low % _WORD)

    def matrix(self) -> np.ndarray:
        """The exact accumulated (K, K) int64 matrix (eager), for ``multiclass_scores``."""
        low = np.asarray(ops.convert_to_numpy(self.matrix_low.value), dtype=np.int64)
        high = np.asarray(ops.convert_to_numpy(self.matrix_high.value), dtype=np.int64)
        return high * _WORD + low

    def _fractions(self):
        m = ops.cast(self.matrix_high, "float32") * float(_WORD) + ops.cast(self.matrix_low, "float32")
        return _safe_div(m, ops.sum(m))  # scale-free: products of fractions cannot overflow

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes,
                "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package="keras_glacier")
class MulticlassMCC(ConfusionMatrixMetric):
    """K-class Matthews correlation: the primary score of the multi-class task."""

    score = "mcc"

    def result(self):
        m = self._fractions()
        t, p = ops.sum(m, axis=1), ops.sum(m, axis=0)
        total = ops.sum(m)
        cov_tp = ops.trace(m) * total - ops.sum(t * p)
        den = ops.sqrt(ops.maximum(total * total - ops.sum(p * p), 0.0)) * ops.sqrt(
            ops.maximum(total * total - ops.sum(t * t), 0.0)
        )
        return ops.cast(_safe_div(cov_tp, den), self.dtype)


def _per_class(m):
    tp = ops.diagonal(m)
    fp, fn = ops.sum(m, axis=0) - tp, ops.sum(m, axis=1) - tp
    return tp, fp, fn


@keras.saving.register_keras_serializable(package="keras_glacier")
class MulticlassMeanIoU(ConfusionMatrixMetric):
    """Mean IoU over the classes present in the truth or the prediction."""

    score = "mean_iou"

    def result(self):
        tp, fp, fn = _per_class(self._fractions())
        union = tp + fp + fn
        present = ops.cast(ops.greater(union, 0.0), "float32")
        iou = _safe_div(tp, union)
        return ops.cast(_safe_div(ops.sum(iou * present), ops.sum(present)), self.dtype)


@keras.saving.register_keras_serializable(package="keras_glacier")
class ClassScore(ConfusionMatrixMetric):
    """One class's IoU, F1, precision or recall (``score``), e.g. ``iou_debris``."""

    def __init__(self, num_classes: int, class_index: int, score: str = "iou", name: str | None = None, **kwargs):
        if score not in PER_CLASS_SCORES:
            raise ValueError(f"score must be one of {', '.join(PER_CLASS_SCORES)}, got {score!r}")
        if not 0 <= int(class_index) < int(num_classes):
            raise ValueError(f"class_index {class_index} outside 0..{int(num_classes) - 1}")
        self.score = score
        self.class_index = int(class_index)
        super().__init__(num_classes, name=name or f"{score}_{class_index}", **kwargs)

    def result(self):
        tp, fp, fn = (ops.take(v, self.class_index) for v in _per_class(self._fractions()))
        if self.score == "iou":
            value = _safe_div(tp, tp + fp + fn)
        elif self.score == "f1":
            value = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
        elif self.score == "precision":
            value = _safe_div(tp, tp + fp)
        else:
            value = _safe_div(tp, tp + fn)
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {**super().get_config(), "class_index": self.class_index, "score": self.score}
