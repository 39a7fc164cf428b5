"""``python -m keras_glacier.evaluate``: score predicted masks against the labels, pooled and per tile.

Two averages answer two questions, so both are reported:

* **pooled**: confusion counts summed over every valid pixel of every tile, then scored, like the
  training metrics (``keras_glacier.metrics``) and like a leaderboard that concatenates pixels;
* **per-tile mean**: each tile scored on its own, then averaged, so a small tile with a badly
  missed glacier weighs as much as a large easy one.

Label pixels of 255 in binary labels (outside the HKH region) and no-data pixels are ignored. A
tile whose prediction equals its truth on every valid pixel scores 1.0 for every score, including
the degenerate cases that the pooled (scikit-learn, ``zero_division=0``) convention would score 0:
a tile with neither glacier nor predicted glacier, and a tile that is all glacier (MCC is undefined
there). A tile without any valid pixel has no scores and is left out of the per-tile mean. A pixel
is glacier when its probability is strictly above the threshold; 0/1 and 0/255 masks are read as
they are.

Multi-class models and masks (:mod:`.classes` says how a run knows) are scored per class from the
K x K confusion matrix (:mod:`.multiclass`). Every report also writes the pooled confusion matrix
as CSV and as a picture normalised per true class.

Predictions come from mask files (``--pred``, named as ``predict`` writes them) and/or from a model
run on the fly (``--model``), which is scored both with and without flip TTA.
"""

from keras_glacier.evaluate.binary import (
    COUNT_NAMES,
    SCORE_NAMES,
    evaluate_predictions,
    mask_counts,
    per_tile_scores,
    summarize,
    tile_row,
    tile_scores,
)
from keras_glacier.evaluate.classes import ClassSet, classes_from_config, classes_from_values, decode_mask
from keras_glacier.evaluate.cli import (
    CONFUSION_CSV,
    CSV_COLUMNS,
    DEFAULT_WORST,
    METRICS_JSON,
    PER_TILE_CSV,
    WORST_PNG,
    build_parser,
    evaluate,
    format_table,
    main,
    plot_worst_tiles,
)
from keras_glacier.evaluate.files import SUBSETS, multiclass_label, prediction_mask, read_prediction, select_samples
from keras_glacier.evaluate.multiclass import evaluate_multiclass_predictions, multiclass_tile_row, summarize_multiclass

__all__ = [
    "CONFUSION_CSV", "COUNT_NAMES", "CSV_COLUMNS", "DEFAULT_WORST", "METRICS_JSON", "PER_TILE_CSV", "SCORE_NAMES",
    "SUBSETS", "WORST_PNG", "ClassSet", "build_parser", "classes_from_config", "classes_from_values", "decode_mask",
    "evaluate", "evaluate_multiclass_predictions", "evaluate_predictions", "format_table", "main", "mask_counts",
    "multiclass_label", "multiclass_tile_row", "per_tile_scores", "plot_worst_tiles", "prediction_mask",
    "read_prediction", "select_samples", "summarize", "summarize_multiclass", "tile_row", "tile_scores",
]
