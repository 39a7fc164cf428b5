"""Binary scores of predicted masks, pooled over all pixels and per tile (numpy in, dicts out).

See :mod:`keras_glacier.evaluate` for the two averages and the per-tile conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_glacier.metrics import ConfusionCounts, confusion_counts, scores_from_counts

SCORE_NAMES = ("mcc", "iou", "f1", "precision", "recall")
COUNT_NAMES = ("tp", "fp", "fn", "tn")


def tile_scores(counts: ConfusionCounts) -> dict[str, float] | None:
    """Scores of one tile; 1.0 everywhere when prediction == truth; None without valid pixels."""
    if counts.n == 0:
        return None
    if counts.fp == 0 and counts.fn == 0:
        return dict.fromkeys(SCORE_NAMES, 1.0)
    scores = scores_from_counts(counts)
    return {name: scores[name] for name in SCORE_NAMES}


def tile_row(tile: str, counts: ConfusionCounts) -> dict:
    """One per_tile.csv row (without the variant): counts, then scores (None when not scorable)."""
    scores = tile_scores(counts) or dict.fromkeys(SCORE_NAMES)
    return {"tile": tile, **{name: getattr(counts, name) for name in COUNT_NAMES}, **scores}


def mask_counts(truth: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> ConfusionCounts:
    """Confusion counts of one tile: ``prediction`` is a 0/1 mask or probabilities (glacier if > threshold)."""
    return confusion_counts(truth, np.asarray(prediction, dtype=np.float32), threshold=threshold)


def per_tile_scores(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> list[dict]:
    """A row per tile: ``tile``, tp, fp, fn, tn and the scores of SCORE_NAMES (see the module doc).

    ``truths``: (H, W) arrays of 0/1/255 (255 ignored); ``predictions``: matching (H, W) 0/1 masks
    or probabilities; ``names`` default to "0", "1", ...
    """
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    names = [str(i) for i in range(len(truths))] if names is None else [str(name) for name in names]
    if len(names) != len(truths):
        raise ValueError(f"{len(names)} names for {len(truths)} tiles")
    rows = []
    for name, truth, prediction in zip(names, truths, predictions):
        truth, prediction = np.asarray(truth), np.asarray(prediction)
        if truth.shape != prediction.shape:
            raise ValueError(f"tile {name}: truth shape {truth.shape} differs from prediction shape {prediction.shape}")
        rows.append(tile_row(name, mask_counts(truth, prediction, threshold)))
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Pooled scores (with the summed counts) and the mean of per-tile scores of ``rows``."""
    total = ConfusionCounts()
    for row in rows:
        total = total + ConfusionCounts(tp=row["tp"], fp=row["fp"], tn=row["tn"], fn=row["fn"])
    pooled = scores_from_counts(total)
    scored = [row for row in rows if row["mcc"] is not None]
    mean = {name: (float(np.mean([row[name] for row in scored])) if scored else None) for name in SCORE_NAMES}
    counts = {name: getattr(total, name) for name in COUNT_NAMES}
    return {
        "pooled": {**{name: pooled[name] for name in SCORE_NAMES}, **counts},
        "confusion_matrix": [[total.tn, total.fp], [total.fn, total.tp]],
        "per_tile_mean": mean,
        "num_tiles": len(rows),
        "num_scored_tiles": len(scored),
    }


def evaluate_predictions(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict:
    """``{"pooled": {scores, tp, fp, fn, tn}, "per_tile_mean": {scores}, "num_tiles", "num_scored_tiles",
    "tiles": per_tile_scores(...)}`` for in-memory truths and predictions."""
    rows = per_tile_scores(truths, predictions, names, threshold)
    return {**summarize(rows), "tiles": rows}
