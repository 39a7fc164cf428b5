"""Segmentation scores accumulated over a whole data set, as Keras metrics and as plain numpy.

* :mod:`keras_glacier.metrics.binary`: MCC, IoU, F1, precision, recall and R2 of the glacier class
  from (tp, fp, tn, fn) counts (``prob > threshold``);
* :mod:`keras_glacier.metrics.multiclass`: K-class MCC, per-class IoU/F1/precision/recall and mean IoU
  from one K x K confusion matrix;
* :mod:`keras_glacier.metrics.threshold`: :func:`best_threshold`, the binary threshold of maximal MCC.

:func:`segmentation_metrics` gives the list for ``model.compile(metrics=...)`` for either task; both
lists start with a metric named ``mcc``, so early stopping and checkpoints monitor ``val_mcc`` in
"max" mode whatever the task.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.metrics.binary import (
    BINARY_METRICS,
    SCORE_NAMES,
    ConfusionCounts,
    ConfusionMetric,
    F1Score,
    IoU,
    MatthewsCorrelation,
    Precision,
    R2Score,
    Recall,
    confusion_counts,
    scores_from_counts,
)
from keras_glacier.metrics.multiclass import (
    PER_CLASS_SCORES,
    ClassScore,
    ConfusionMatrixMetric,
    MulticlassMCC,
    MulticlassMeanIoU,
    class_scores,
    confusion_matrix,
    mean_iou,
    multiclass_mcc,
    multiclass_scores,
)
from keras_glacier.metrics.threshold import best_threshold

__all__ = [
    "PER_CLASS_SCORES", "SCORE_NAMES", "ClassScore", "ConfusionCounts", "ConfusionMatrixMetric",
    "ConfusionMetric", "F1Score", "IoU", "MatthewsCorrelation", "MulticlassMCC", "MulticlassMeanIoU",
    "Precision", "R2Score", "Recall", "best_threshold", "class_scores", "confusion_counts", "confusion_matrix",
    "mean_iou", "multiclass_mcc", "multiclass_scores", "scores_from_counts", "segmentation_metrics",
]


def segmentation_metrics(
    threshold: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    task: str = "binary",
    class_names: Sequence[str] | None = None,
) -> list:
    """Fresh metric objects for ``model.compile(metrics=...)``.

    binary: ``mcc, iou, f1, precision, recall, r2`` at ``threshold`` (SCORE_NAMES order);
    multiclass: ``mcc, mean_iou`` and ``iou_<class name>`` per class of ``class_names``. The full
    per-class report (F1, precision, recall) comes from one metric's ``matrix()`` through
    :func:`multiclass_scores`, rather than from 3 K more metrics in every epoch's log.
    """
    if task == "binary":
        return [cls(threshold=threshold, ignore_index=ignore_index) for cls in BINARY_METRICS]
    if task != "multiclass":
        raise ValueError(f"unknown task {task!r}; choose binary or multiclass")
    if class_names is None or len(class_names) < 2:
        raise ValueError(f"the multiclass task needs at least 2 class names, got {class_names}")
    k = len(class_names)
    return [
        MulticlassMCC(k, ignore_index=ignore_index),
        MulticlassMeanIoU(k, ignore_index=ignore_index),
        *(ClassScore(k, i, "iou", name=f"iou_{name}", ignore_index=ignore_index) for i, name in enumerate(class_names)),
    ]
