"""Binary segmentation scores accumulated over a whole data set, as Keras metrics and as plain numpy.

Scores are computed from the confusion counts of *all* valid pixels seen since the last reset
(not averaged per batch), so they equal scikit-learn's scores on the concatenated pixels. Pixels
labelled IGNORE_INDEX are left out; a pixel is predicted glacier when its probability exceeds the
threshold (``prob > threshold``, i.e. logit > 0 at 0.5). Degenerate cases follow scikit-learn with
``zero_division=0``: a score whose denominator is 0 is 0 (MCC too); R2 with constant truth is 1 for a
perfect fit, else 0.

Counting precision: a float32 counter stops counting exactly at 2**24 (~16.8M pixels, i.e. 64 tiles
of 512x512), and JAX has no 64-bit types unless x64 mode is on. So counts are kept as pairs of int32
words (``low`` in [0, 2**24) plus ``high`` multiples of 2**24), which is exact up to 2**55 pixels, and
the one floating-point sum (R2's residual sum of squares) is Kahan-compensated across batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.constants import IGNORE_INDEX

SCORE_NAMES = ("mcc", "iou", "f1", "precision", "recall", "r2")
_WORD = 1 << 24  # counts below this are exact in float32


@dataclass(frozen=True)
class ConfusionCounts:
    """Pixel counts over valid pixels, plus R2's residual sum of squares sum((y - p)^2)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    ss_res: float = 0.0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.tn + other.tn,
            self.fn + other.fn,
            self.ss_res + other.ss_res,
        )


def confusion_counts(
    y_true, prob, threshold: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> ConfusionCounts:
    """Counts of one batch (any matching shapes); y_true holds 0, 1 or ``ignore_index``."""
    y_true = np.asarray(y_true)
    prob = np.asarray(prob, dtype=np.float64)
    if y_true.shape != prob.shape:
        raise ValueError(f"y_true shape {y_true.shape} differs from prob shape {prob.shape}")
    valid = y_true != ignore_index
    truth = (y_true == 1) & valid
    pred = (prob > threshold) & valid
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(truth & ~pred))
    tn = int(np.count_nonzero(valid)) - tp - fp - fn
    ss_res = float(np.sum(np.square(truth[valid].astype(np.float64) - prob[valid])))
    return ConfusionCounts(tp, fp, tn, fn, ss_res)


def scores_from_counts(counts: ConfusionCounts) -> dict[str, float]:
    """All scores of SCORE_NAMES from accumulated counts (float64, exact integer counts)."""
    tp, fp, tn, fn = counts.tp, counts.fp, counts.tn, counts.fn

    def ratio(num: float, den: float) -> float:
        return float(num) / float(den) if den else 0.0

    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)  # Python ints: no overflow
    mcc = ratio(tp * tn - fp * fn, math.sqrt(den)) if den else 0.0
    n = counts.n
    pos = tp + fn
    ss_tot = pos * (n - pos) / n if n else 0.0  # sum (y - mean y)^2 for 0/1 truth
    if n == 0:
        r2 = 0.0
    elif ss_tot == 0:
        r2 = 1.0 if counts.ss_res == 0 else 0.0
    else:
        r2 = 1.0 - counts.ss_res / ss_tot
    return {
        "mcc": mcc,
        "iou": ratio(tp, tp + fp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "r2": r2,
    }


def _safe_div(num, den):
    ok = ops.greater(den, 0.0)
    return ops.where(ok, num / ops.where(ok, den, 1.0), 0.0)


class ConfusionMetric(keras.metrics.Metric):
    """Shared state of the confusion-matrix scores; subclasses only choose ``score``."""

    score: str = ""

    def __init__(
        self,
        name: str | None = None,
        threshold: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
        from_logits: bool = True,
        dtype=None,
    ):
        super().__init__(name=name or self.score, dtype=dtype)
        self.threshold = float(threshold)
        self.ignore_index = int(ignore_index)
        self.from_logits = bool(from_logits)
        # (tp, fp, tn, fn) = high * 2**24 + low, both int32.
        self.counts_low = self.add_variable(shape=(4,), initializer="zeros", dtype="int32", name="counts_low")
        self.counts_high = self.add_variable(
            shape=(4,), initializer="zeros", dtype="int32", name="counts_high"
        )

    def _prepare(self, y_true, y_pred, sample_weight):
        if sample_weight is not None:
            raise ValueError(
                f"metric '{self.name}' does not take sample weights; label pixels {self.ignore_index} "
                "to leave them out"
            )
        y_true = ops.cast(y_true, "float32")
        prob = ops.cast(y_pred, "float32")
        if self.from_logits:
            prob = ops.sigmoid(prob)
        valid = ops.not_equal(y_true, float(self.ignore_index))
        truth = ops.logical_and(ops.equal(y_true, 1.0), valid)
        pred = ops.logical_and(ops.greater(prob, self.threshold), valid)
        return valid, truth, pred, prob

    def update_state(self, y_true, y_pred, sample_weight=None):
        valid, truth, pred, _ = self._prepare(y_true, y_pred, sample_weight)
        self._add_counts(valid, truth, pred)

    def _add_counts(self, valid, truth, pred):
        def count(mask):
            return ops.sum(ops.cast(mask, "int32"))

        tp = count(ops.logical_and(truth, pred))
        fp = count(ops.logical_and(pred, ops.logical_not(truth)))
        fn = count(ops.logical_and(truth, ops.logical_not(pred)))
        tn = count(valid) - tp - fp - fn
        low = self.counts_low + ops.stack([tp, fp, tn, fn])
        self.counts_high.assign(self.counts_high + low // _WORD)
        self.counts_low.assign(low % _WORD)

    def counts(self):
        """(tp, fp, tn, fn) as float32 (relative error at most 2**-24 once past 2**24)."""
        high = ops.cast(self.counts_high, "float32")
        low = ops.cast(self.counts_low, "float32")
        return high * float(_WORD) + low

    def confusion(self) -> ConfusionCounts:
        """Exact accumulated counts as Python integers (eager, e.g. for scores_from_counts)."""
        low = np.asarray(ops.convert_to_numpy(self.counts_low.value), dtype=np.int64)
        high = np.asarray(ops.convert_to_numpy(self.counts_high.value), dtype=np.int64)
        tp, fp, tn, fn = (int(v) for v in high * _WORD + low)
        return ConfusionCounts(tp, fp, tn, fn)

    def result(self):
        counts = self.counts()
        # Fractions of all valid pixels: scale-free scores, and MCC's products cannot overflow.
        total = ops.sum(counts)
        tp, fp, tn, fn = ops.unstack(_safe_div(counts, total), 4)
        if self.score == "mcc":
            den = ops.sqrt((tp + fp) * (tp + fn)) * ops.sqrt((tn + fp) * (tn + fn))
            value = _safe_div(tp * tn - fp * fn, den)
        elif self.score == "iou":
            value = _safe_div(tp, tp + fp + fn)
        elif self.score == "f1":
            value = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
        elif self.score == "precision":
            value = _safe_div(tp, tp + fp)
        elif self.score == "recall":
            value = _safe_div(tp, tp + fn)
        else:
            raise ValueError(f"unknown score '{self.score}'")
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "threshold": self.threshold,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="keras_glacier")
class MatthewsCorrelation(ConfusionMetric):
    """Matthews correlation coefficient: the primary score (robust to the glacier/background imbalance)."""

    score = "mcc"


@keras.saving.register_keras_serializable(package="keras_glacier")
class IoU(ConfusionMetric):
    """Intersection over union (Jaccard index) of the glacier class."""

    score = "iou"


@keras.saving.register_keras_serializable(package="keras_glacier")
class F1Score(ConfusionMetric):
    """F1 (Dice coefficient) of the glacier class."""

    score = "f1"


@keras.saving.register_keras_serializable(package="keras_glacier")
class Precision(ConfusionMetric):
    """Precision of the glacier class."""

    score = "precision"


@keras.saving.register_keras_serializable(package="keras_glacier")
class Recall(ConfusionMetric):
    """Recall of the glacier class."""

    score = "recall"


@keras.saving.register_keras_serializable(package="keras_glacier")
class R2Score(ConfusionMetric):
    """Coefficient of determination of the probability map against the 0/1 truth.

    Needs sum y, sum y^2, n (all derived exactly from the counts, since y is 0/1) and sum (y - p)^2,
    which is summed row by row within a batch and Kahan-compensated across batches.
    """

    score = "r2"

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.ss_res = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="ss_res")
        self.ss_res_carry = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="ss_res_carry"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        valid, truth, pred, prob = self._prepare(y_true, y_pred, sample_weight)
        self._add_counts(valid, truth, pred)
        sq = ops.where(valid, ops.square(ops.cast(truth, "float32") - prob), 0.0)
        # Summing one axis at a time keeps float32 rounding error near sqrt(size of an axis).
        while len(sq.shape) > 0:
            sq = ops.sum(sq, axis=-1)
        term = sq - self.ss_res_carry
        total = self.ss_res + term
        self.ss_res_carry.assign((total - self.ss_res) - term)
        self.ss_res.assign(total)

    def confusion(self) -> ConfusionCounts:
        counts = super().confusion()
        ss_res = float(ops.convert_to_numpy(self.ss_res.value))
        return ConfusionCounts(counts.tp, counts.fp, counts.tn, counts.fn, ss_res)

    def result(self):
        tp, fp, tn, fn = ops.unstack(self.counts(), 4)
        n = tp + fp + tn + fn
        pos = tp + fn
        ss_tot = _safe_div(pos * (n - pos), n)
        perfect = ops.where(ops.equal(self.ss_res, 0.0), 1.0, 0.0)
        value = ops.where(
            ops.greater(ss_tot, 0.0),
            1.0 - self.ss_res / ops.where(ops.greater(ss_tot, 0.0), ss_tot, 1.0),
            ops.where(ops.greater(n, 0.0), perfect, 0.0),
        )
        return ops.cast(value, self.dtype)


BINARY_METRICS = (MatthewsCorrelation, IoU, F1Score, Precision, Recall, R2Score)
