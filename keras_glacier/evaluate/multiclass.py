"""Multi-class scores of predicted class maps, pooled over all pixels and per tile (numpy in, dicts out).

Pooled scores come from the K x K confusion matrix summed over every valid pixel of every tile
(``keras_glacier.metrics.multiclass_scores``: scikit-learn's multi-class MCC, per-class IoU, F1,
precision, recall, mean IoU over the classes that occur). Per tile, as in the binary report, a
tile whose prediction equals its truth on every valid pixel scores 1.0 (MCC is undefined when a
tile holds one class), a class that occurs neither in a tile's truth nor in its prediction has no
IoU/F1 there (empty cell, left out of the per-tile mean), and a tile without valid pixels has no
scores at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.metrics import PER_CLASS_SCORES, class_scores, confusion_matrix, multiclass_mcc, multiclass_scores

TILE_SCORES = ("mcc", "mean_iou", "accuracy")
TILE_CLASS_SCORES = ("iou", "f1")


def tile_columns(class_names: Sequence[str]) -> list[str]:
    """The score columns of a per-tile row: TILE_SCORES, then iou_<class> and f1_<class>."""
    return [*TILE_SCORES, *(f"{score}_{name}" for score in TILE_CLASS_SCORES for name in class_names)]


def class_map(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices (H, W) as they are, or the argmax of (H, W, K) probabilities."""
    prediction = np.asarray(prediction)
    if prediction.ndim == 3:
        if prediction.shape[-1] != num_classes:
            raise ValueError(f"{prediction.shape[-1]} probability channels for {num_classes} classes")
        return prediction.argmax(axis=-1)
    return prediction


def multiclass_tile_row(tile: str, matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """``{"tile", "pixels", mcc, mean_iou, accuracy, iou_<class>..., f1_<class>...}`` of one tile's matrix."""
    columns = tile_columns(class_names)
    pixels = int(matrix.sum())
    row = {"tile": tile, "pixels": pixels, **dict.fromkeys(columns)}
    if pixels == 0:
        return row
    perfect = np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0
    occurs = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    per = class_scores(matrix)
    row["mcc"] = 1.0 if perfect else multiclass_mcc(matrix)
    row["accuracy"] = float(np.trace(matrix)) / pixels
    row["mean_iou"] = float(per["iou"][occurs].mean())
    for score in TILE_CLASS_SCORES:
        for index, name in enumerate(class_names):
            row[f"{score}_{name}"] = float(per[score][index]) if occurs[index] else None
    return row


def summarize_multiclass(rows: Sequence[dict], matrices: Sequence[np.ndarray], class_names: Sequence[str]) -> dict:
    """Pooled scores with the summed confusion matrix, and the mean of per-tile scores (see module doc)."""
    k = len(class_names)
    total = np.zeros((k, k), np.int64)
    for matrix in matrices:
        total += matrix
    mean = {}
    for column in tile_columns(class_names):
        values = [row[column] for row in rows if row[column] is not None]
        mean[column] = float(np.mean(values)) if values else None
    return {
        "pooled": multiclass_scores(total, class_names),
        "confusion_matrix": total.tolist(),
        "per_tile_mean": mean,
        "num_tiles": len(rows),
        "num_scored_tiles": sum(row["pixels"] > 0 for row in rows),
    }


def evaluate_multiclass_predictions(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    class_names: Sequence[str],
    names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """``summarize_multiclass(...)`` plus ``"tiles"`` (one row per tile) for in-memory arrays.

    ``truths``: (H, W) class indices with ``ignore_index``; ``predictions``: (H, W) class indices or
    (H, W, K) probabilities; ``names`` default to "0", "1", ...
    """
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    names = [str(i) for i in range(len(truths))] if names is None else [str(name) for name in names]
    if len(names) != len(truths):
        raise ValueError(f"{len(names)} names for {len(truths)} tiles")
    k = len(class_names)
    rows, matrices = [], []
    for name, truth, prediction in zip(names, truths, predictions):
        pred = class_map(prediction, k)
        if np.shape(truth) != pred.shape:
            raise ValueError(f"tile {name}: truth shape {np.shape(truth)} differs from prediction shape {pred.shape}")
        matrix = confusion_matrix(truth, pred, k, ignore_index)
        matrices.append(matrix)
        rows.append(multiclass_tile_row(name, matrix, class_names))
    return {**summarize_multiclass(rows, matrices, class_names), "tiles": rows}


def format_multiclass(summary: dict, variant: str) -> list[str]:
    """Printed lines of one variant: overall scores (pooled, per-tile mean), then pooled per class."""
    lines = [f"{variant:<8} {'averaging':<14}" + "".join(f"{name:>10}" for name in TILE_SCORES)]
    for label, key in (("pooled", "pooled"), ("per-tile mean", "per_tile_mean")):
        values = [summary[key][name] for name in TILE_SCORES]
        lines.append(f"{variant:<8} {label:<14}" + "".join(f"{'n/a':>10}" if v is None else f"{v:>10.4f}"
                                                          for v in values))
    lines.append(f"{'':<8} {'class':<14}" + "".join(f"{s:>10}" for s in (*PER_CLASS_SCORES, "support")))
    for name, scores in summary["pooled"]["per_class"].items():
        values = "".join(f"{scores[s]:>10.4f}" for s in PER_CLASS_SCORES)
        lines.append(f"{'':<8} {name:<14}{values}{scores['support']:>10}")
    return lines
