"""``python -m keras_glacier.evaluate``: score predicted masks against the labels, pooled and per tile.

Two averages answer two questions, so both are reported:

* **pooled**: confusion counts summed over every valid pixel of every tile, then scored, like the
  training metrics (``keras_glacier.metrics``) and like a leaderboard that concatenates pixels;
* **per-tile mean**: each tile scored on its own, then averaged, so a small tile with a badly
  missed glacier weighs as much as a large easy one.

Label pixels of 255 (outside the HKH region, no-data) are ignored. A tile whose prediction equals
its truth on every valid pixel scores 1.0 for every score, including the degenerate cases that the
pooled (scikit-learn, ``zero_division=0``) convention would score 0: a tile with neither glacier
nor predicted glacier, and a tile that is all glacier (MCC is undefined there). A tile without any
valid pixel has no scores and is left out of the per-tile mean. A pixel is glacier when its
probability is strictly above the threshold; 0/1 and 0/255 masks are read as they are.

Predictions come from mask files (``--pred``, named as ``predict`` writes them) and/or from a model
run on the fly (``--model``), which is scored both with and without flip TTA.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.errors import InputError
from keras_glacier.data.fileio import atomic_write, write_json
from keras_glacier.data.sources import DatasetSource, Sample, discover
from keras_glacier.data.split import load_split
from keras_glacier.inference import (
    TileData,
    bands_argument,
    check_band_count,
    check_threshold,
    check_tiling,
    choose_bands,
    iter_chunks,
    keras_forward,
    load_run,
    make_folder,
    output_name,
    predict_probabilities,
    shared,
)
from keras_glacier.metrics import ConfusionCounts, confusion_counts, scores_from_counts
from keras_glacier.predict import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_WINDOW

SCORE_NAMES = ("mcc", "iou", "f1", "precision", "recall")
COUNT_NAMES = ("tp", "fp", "fn", "tn")
CSV_COLUMNS = ("tile", "variant", *COUNT_NAMES, *SCORE_NAMES)
SUBSETS = ("val", "train", "all")
PRED, TTA, NO_TTA = "pred", "tta", "no_tta"
DEFAULT_WORST = 6
PER_TILE_CSV, WORST_PNG, METRICS_JSON = "per_tile.csv", "worst_tiles.png", "metrics.json"


# ---------------------------------------------------------------------------------------------
# Scores (numpy in, dicts out): the API the notebook calls
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Files: labels, prediction masks, split
# ---------------------------------------------------------------------------------------------


def prediction_mask(array: np.ndarray, path: Path, threshold: float = 0.5) -> np.ndarray:
    """A prediction file's content as a boolean mask: 0/255 and 0/1 masks, or probabilities in [0, 1]."""
    if not np.isfinite(array).all():
        raise InputError(f"{path}: prediction has NaN/inf values")
    positive = array[array != 0]
    if positive.size and np.all(positive == 255):
        return array != 0
    if positive.size and (positive.min() < 0 or positive.max() > 1):
        found = np.unique(positive)[:5].tolist()
        raise InputError(f"{path}: prediction values must be 0/255, 0/1 or probabilities in [0, 1]; found {found}")
    return array > threshold


def read_prediction(pred_dir: Path, tile: TileData, threshold: float = 0.5) -> np.ndarray:
    """The tile's mask from ``pred_dir/<name predict writes>``, checked against the label's size."""
    name = output_name(tile.sample)
    path = pred_dir / name
    if not path.is_file():
        raise InputError(f"{path}: missing prediction for tile {tile.sample.sample_id!r} (expected file {name})")
    array = shared("read_band", path)
    if array.shape != tile.label.shape:
        raise InputError(
            f"{path}: prediction size {tuple(array.shape)} differs from the label size {tuple(tile.label.shape)} "
            f"({tile.sample.label_path})"
        )
    return prediction_mask(array, path, threshold)


def select_samples(source: DatasetSource, split: str | Path | None, subset: str | None = None) -> list[Sample]:
    """All samples, or those of ``subset`` (default val) in a run's split.json (a run folder means its split.json)."""
    if split is None:
        if subset is not None:
            raise InputError(f"--subset {subset}: needs --split (a run's split.json)")
        return list(source.samples)
    subset = subset or "val"
    if subset not in SUBSETS:
        raise InputError(f"--subset {subset!r}: must be one of {', '.join(SUBSETS)}")
    path = Path(split)
    if path.is_dir():
        path = path / "split.json"
    train, val = load_split(path, source.samples)
    chosen = {"train": train, "val": val, "all": train + val}[subset]
    if not chosen:
        raise InputError(f"{path}: the {subset} subset is empty")
    return chosen


# ---------------------------------------------------------------------------------------------
# The evaluation run
# ---------------------------------------------------------------------------------------------


def evaluate(
    labels_from: str | Path,
    out_dir: str | Path | None = None,
    pred_dir: str | Path | None = None,
    model=None,
    split: str | Path | None = None,
    subset: str | None = None,
    bands: Sequence[int] | None = None,
    threshold: float = 0.5,
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    worst: int = DEFAULT_WORST,
    progress: bool | None = None,
) -> dict:
    """Score ``pred_dir``'s masks and/or ``model`` (with and without TTA) on ``labels_from``'s labels.

    ``split`` (a run's split.json or run folder) restricts the tiles to ``subset`` (default "val").

    Returns ``{"variants": {name: summarize(...)}, "tiles": {name: rows}, ...settings}``; with
    ``out_dir`` also writes per_tile.csv, metrics.json (everything but the rows) and worst_tiles.png
    (the ``worst`` tiles by per-tile MCC, then IoU, of the first variant). Tiles are read a batch at
    a time, so memory does not grow with the number of tiles.
    """
    from tqdm import tqdm

    check_tiling(window, overlap, batch_size)
    check_threshold(threshold)
    if worst < 0:
        raise InputError(f"--worst {worst}: must be at least 0")
    if pred_dir is None and model is None:
        raise InputError("nothing to evaluate: give --pred DIR (predicted masks) and/or --model MODEL")
    source = discover(labels_from)
    if not source.has_labels:
        raise InputError(f"{source.root}: no labels (band folders need a label/ folder next to Band1..BandN)")
    samples = select_samples(source, split, subset)
    if pred_dir is not None:
        pred_dir = Path(pred_dir)
        if not pred_dir.is_dir():
            raise InputError(f"{pred_dir}: prediction folder not found")
    loaded = load_run(model) if model is not None else None
    chosen = choose_bands(source, bands, loaded.config if loaded else None)
    variants = ([PRED] if pred_dir is not None else []) + ([TTA, NO_TTA] if loaded is not None else [])
    if loaded is not None:
        check_band_count(loaded, source, chosen)
        forward = keras_forward(loaded.model)
    rows: dict[str, list[dict]] = {variant: [] for variant in variants}
    candidates: list[tuple[float, float, str, TileData, np.ndarray]] = []
    bar = tqdm(total=len(samples), desc="evaluating", unit="tile", file=sys.stderr,
               disable=None if progress is None else not progress)
    with bar:
        for chunk in iter_chunks(samples, chosen, batch_size):
            predictions: dict[str, list[np.ndarray]] = {}
            if pred_dir is not None:
                predictions[PRED] = [read_prediction(pred_dir, tile, threshold) for tile in chunk]
            if loaded is not None:
                images = [tile.image for tile in chunk]
                for variant, tta in ((TTA, True), (NO_TTA, False)):
                    maps = predict_probabilities(forward, images, tta, window, overlap, batch_size)
                    predictions[variant] = [probability > threshold for probability in maps]
            for variant in variants:
                for tile, mask in zip(chunk, predictions[variant]):
                    row = tile_row(tile.sample.sample_id, mask_counts(tile.label, mask))
                    rows[variant].append(row)
                    if variant == variants[0] and row["mcc"] is not None:
                        candidates.append((row["mcc"], row["iou"], row["tile"], tile, mask))
            candidates = sorted(candidates, key=lambda item: item[:3])[:worst]
            bar.update(len(chunk))
    report = {
        "labels_from": str(source.root),
        "pred": None if pred_dir is None else str(pred_dir),
        "model": None if loaded is None else loaded.name,
        "split": None if split is None else str(split),
        "subset": (subset or "val") if split is not None else "all",
        "bands": list(chosen),
        "threshold": threshold,
        "num_tiles": len(samples),
        "variants": {variant: summarize(rows[variant]) for variant in variants},
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        make_folder(out_dir)
        write_per_tile_csv(out_dir / PER_TILE_CSV, rows)
        write_json(out_dir / METRICS_JSON, report)
        if candidates:
            plot_worst_tiles(out_dir / WORST_PNG, candidates)
    return {**report, "tiles": rows}


def write_per_tile_csv(path: Path, rows: dict[str, list[dict]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for variant, variant_rows in rows.items():
        for row in variant_rows:
            values = {**row, "variant": variant}
            writer.writerow(
                ["" if values[key] is None else f"{values[key]:.6f}" if key in SCORE_NAMES else values[key]
                 for key in CSV_COLUMNS]
            )
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))


def _stack_padded(arrays: Sequence[np.ndarray], fill) -> np.ndarray:
    """Stack tiles of different sizes, padding bottom/right with ``fill`` (plot_predictions needs one array)."""
    height = max(array.shape[0] for array in arrays)
    width = max(array.shape[1] for array in arrays)
    out = np.full((len(arrays), height, width, *arrays[0].shape[2:]), fill, dtype=arrays[0].dtype)
    for index, array in enumerate(arrays):
        out[index, : array.shape[0], : array.shape[1]] = array
    return out


def plot_worst_tiles(path: Path, candidates: Sequence[tuple[float, float, str, TileData, np.ndarray]]) -> Path:
    """Bands as RGB, truth, prediction and errors of each tile, worst first.

    The RGB stretch is the 1st-99th percentile of the shown tiles' finite pixels, so the figure
    does not depend on a run's statistics (a ``--pred`` evaluation has none).
    """
    from keras_glacier.plots import plot_predictions

    images = _stack_padded([tile.image for *_, tile, _ in candidates], np.nan)
    truths = _stack_padded([tile.label for *_, tile, _ in candidates], IGNORE_INDEX)
    masks = _stack_padded([mask.astype(np.float32) for *_, mask in candidates], 0.0)
    pixels = images.reshape(-1, images.shape[-1])
    pixels = np.where(np.isfinite(pixels), pixels, np.nan)
    lo, hi = np.nanpercentile(pixels, 1, axis=0), np.nanpercentile(pixels, 99, axis=0)
    titles = [f"{name}\nMCC {mcc:.3f}  IoU {iou:.3f}" for mcc, iou, name, _, _ in candidates]
    return plot_predictions(images, truths, masks, path, lo=lo, hi=hi, titles=titles)


def format_table(report: dict) -> str:
    """The printed summary: one line per variant and averaging, scores as columns."""
    header = f"{'variant':<8} {'averaging':<14}" + "".join(f"{name:>10}" for name in SCORE_NAMES)
    lines = [f"{report['num_tiles']} tiles ({report['subset']}) from {report['labels_from']}", header]
    for variant, summary in report["variants"].items():
        for label, key in (("pooled", "pooled"), ("per-tile mean", "per_tile_mean")):
            values = "".join(
                f"{'n/a':>10}" if summary[key][name] is None else f"{summary[key][name]:>10.4f}" for name in SCORE_NAMES
            )
            lines.append(f"{variant:<8} {label:<14}{values}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_glacier.evaluate",
        description="Score glacier masks against labels: MCC, IoU, F1, precision and recall, pooled over all "
        "pixels and as the mean of per-tile scores (label 255 ignored).",
    )
    parser.add_argument("--labels-from", required=True, type=Path,
                        help="dataset with labels: HKH slice_<i>_image_<j>.npy + mask files, or band folders "
                        "Band1..BandN with label/")
    parser.add_argument("--pred", type=Path, default=None,
                        help="folder of predicted mask TIFFs (0/255, 0/1 or probabilities), named as predict "
                        "writes them (Band1 file name; <stem>.tif for npy slices)")
    parser.add_argument("--model", default=None,
                        help="run folder or .keras file: predict on the fly and score with and without TTA")
    parser.add_argument("--out", required=True, type=Path,
                        help=f"report folder for {PER_TILE_CSV}, {WORST_PNG} and {METRICS_JSON} (created)")
    parser.add_argument("--split", type=Path, default=None,
                        help="a run's split.json (or the run folder): evaluate only the tiles of --subset")
    parser.add_argument("--subset", choices=SUBSETS, default=None,
                        help="with --split: which side of the split to evaluate (default val)")
    parser.add_argument("--bands", type=bands_argument, default=None,
                        help="npy slices only: comma-separated channels (default: the run's config.json, else "
                        "1,2,3,5,9); they also define no-data pixels, which are ignored")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="glacier when probability > threshold, for --model and probability TIFFs (default 0.5)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="--model: tiling window, a multiple of 16")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="--model: minimum overlap of windows")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="tiles read at a time, and with --model images per forward pass, each TTA flip counting "
                             "as one (default 4)")
    parser.add_argument("--worst", type=int, default=DEFAULT_WORST,
                        help=f"number of worst tiles (by per-tile MCC, then IoU) in {WORST_PNG} "
                        f"(default {DEFAULT_WORST})")
    return parser


def run_job(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = evaluate(
        args.labels_from, out_dir=args.out, pred_dir=args.pred, model=args.model, split=args.split,
        subset=args.subset, bands=args.bands, threshold=args.threshold, window=args.window,
        overlap=args.overlap, batch_size=args.batch_size, worst=args.worst,
    )
    print(format_table(report))
    print(f"report: {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from keras_glacier.cli import run

    return run(run_job, argv)


if __name__ == "__main__":
    sys.exit(main())
