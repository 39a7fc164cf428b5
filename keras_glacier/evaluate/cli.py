"""The evaluation run and ``python -m keras_glacier.evaluate``: read, score, write the report."""

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
from keras_glacier.data.fileio import write_json, write_text
from keras_glacier.data.sources import NPY, discover
from keras_glacier.evaluate.binary import COUNT_NAMES, SCORE_NAMES, mask_counts, summarize, tile_row
from keras_glacier.evaluate.classes import ClassSet, classes_from_config, classes_from_values
from keras_glacier.evaluate.files import (
    SUBSETS,
    folder_has_multiclass_values,
    iter_tiles,
    read_prediction,
    select_samples,
)
from keras_glacier.evaluate.multiclass import (
    format_multiclass,
    multiclass_tile_row,
    summarize_multiclass,
    tile_columns,
)
from keras_glacier.inference import (
    TileData,
    bands_argument,
    check_band_count,
    check_threshold,
    check_tiling,
    choose_bands,
    keras_forward,
    load_run,
    make_folder,
    predict_probabilities,
)
from keras_glacier.metrics import confusion_matrix
from keras_glacier.predict import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_WINDOW, add_tiling_arguments

CSV_COLUMNS = ("tile", "variant", *COUNT_NAMES, *SCORE_NAMES)
PRED, TTA, NO_TTA = "pred", "tta", "no_tta"
DEFAULT_WORST = 6
PER_TILE_CSV, WORST_PNG, METRICS_JSON = "per_tile.csv", "worst_tiles.png", "metrics.json"
CONFUSION_CSV = "confusion_matrix.csv"


def confusion_png(variant: str) -> str:
    return f"confusion_{variant}.png"


def model_settings(loaded) -> tuple[ClassSet, float | None]:
    """The class set and the stored decision threshold of a loaded model (old models: binary, None)."""
    try:
        config = loaded.model.get_config() or {}
    except (NotImplementedError, TypeError):
        config = {}
    threshold = config.get("threshold")
    return classes_from_config(config, loaded.name), None if threshold is None else float(threshold)


def evaluate(
    labels_from: str | Path,
    out_dir: str | Path | None = None,
    pred_dir: str | Path | None = None,
    model=None,
    split: str | Path | None = None,
    subset: str | None = None,
    bands: Sequence[int] | None = None,
    threshold: float | None = None,
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    worst: int = DEFAULT_WORST,
    progress: bool | None = None,
) -> dict:
    """Score ``pred_dir``'s masks and/or ``model`` (with and without TTA) on ``labels_from``'s labels.

    ``split`` (a run's split.json or run folder) restricts the tiles to ``subset`` (default "val").
    The classes come from the model's configuration, else from the masks' values (see
    :mod:`keras_glacier.evaluate.classes`); ``threshold`` (binary) defaults to the model's stored
    one, else 0.5.

    Returns ``{"variants": {name: summary}, "tiles": {name: rows}, ...settings}``; with ``out_dir``
    also writes per_tile.csv, metrics.json (everything but the rows), confusion_matrix.csv, a
    normalised confusion_<variant>.png per variant and worst_tiles.png (the ``worst`` tiles by
    per-tile MCC, then IoU / mean IoU, of the first variant). Tiles are read a batch at a time, so
    memory does not grow with the number of tiles.
    """
    from tqdm import tqdm

    check_tiling(window, overlap, batch_size)
    if threshold is not None:
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
    if loaded is not None:
        classes, stored = model_settings(loaded)
        threshold = stored if threshold is None else threshold
    else:
        multiclass = folder_has_multiclass_values(pred_dir, samples)
        classes = classes_from_values([85] if multiclass else [], npy=source.kind == NPY)
    threshold = 0.5 if threshold is None else threshold
    chosen = choose_bands(source, bands, loaded.config if loaded else None)
    variants = ([PRED] if pred_dir is not None else []) + ([TTA, NO_TTA] if loaded is not None else [])
    if loaded is not None:
        check_band_count(loaded, source, chosen)
        forward = keras_forward(loaded.model)
    rows: dict[str, list[dict]] = {variant: [] for variant in variants}
    matrices: dict[str, list[np.ndarray]] = {variant: [] for variant in variants}
    candidates: list[tuple] = []
    k = classes.num_classes
    bar = tqdm(total=len(samples), desc="evaluating", unit="tile", file=sys.stderr,
               disable=None if progress is None else not progress)
    with bar:
        for chunk in iter_tiles(samples, chosen, batch_size, classes):
            predictions: dict[str, list[np.ndarray]] = {}
            if pred_dir is not None:
                predictions[PRED] = [read_prediction(pred_dir, tile, threshold, classes) for tile in chunk]
            if loaded is not None:
                images = [tile.image for tile in chunk]
                for variant, tta in ((TTA, True), (NO_TTA, False)):
                    maps = predict_probabilities(forward, images, tta, window, overlap, batch_size)
                    predictions[variant] = [m.argmax(-1) if classes.multiclass else m > threshold for m in maps]
            for variant in variants:
                for tile, mask in zip(chunk, predictions[variant]):
                    name = tile.sample.sample_id
                    if classes.multiclass:
                        matrix = confusion_matrix(tile.label, mask, k)
                        row = multiclass_tile_row(name, matrix, classes.names)
                        key = (row["mcc"], row["mean_iou"], name)
                    else:
                        row = tile_row(name, mask_counts(tile.label, mask))
                        matrix = np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], np.int64)
                        key = (row["mcc"], row["iou"], name)
                    rows[variant].append(row)
                    matrices[variant].append(matrix)
                    if variant == variants[0] and row["mcc"] is not None:
                        candidates.append((*key, tile, mask))
            candidates = sorted(candidates, key=lambda item: item[:3])[:worst]
            bar.update(len(chunk))
    summaries = {
        variant: summarize_multiclass(rows[variant], matrices[variant], classes.names)
        if classes.multiclass else summarize(rows[variant])
        for variant in variants
    }
    report = {
        "labels_from": str(source.root),
        "pred": None if pred_dir is None else str(pred_dir),
        "model": None if loaded is None else loaded.name,
        "split": None if split is None else str(split),
        "subset": (subset or "val") if split is not None else "all",
        "bands": list(chosen),
        **classes.to_dict(),
        "threshold": None if classes.multiclass else threshold,
        "num_tiles": len(samples),
        "variants": summaries,
    }
    if out_dir is not None:
        write_report(Path(out_dir), report, rows, candidates, classes)
    return {**report, "tiles": rows}


def write_report(out_dir: Path, report: dict, rows: dict[str, list[dict]], candidates: list, classes: ClassSet):
    from keras_glacier.plots import plot_confusion_matrix

    make_folder(out_dir)
    if classes.multiclass:
        columns = ("tile", "variant", "pixels", *tile_columns(classes.names))
        scores = set(tile_columns(classes.names))
    else:
        columns, scores = CSV_COLUMNS, set(SCORE_NAMES)
    write_csv(out_dir / PER_TILE_CSV, columns, [{**row, "variant": v} for v, vrows in rows.items() for row in vrows],
              scores)
    write_json(out_dir / METRICS_JSON, report)
    matrix_rows = [
        {"variant": variant, "true_class": name, **dict(zip(classes.names, counts))}
        for variant, summary in report["variants"].items()
        for name, counts in zip(classes.names, summary["confusion_matrix"])
    ]
    write_csv(out_dir / CONFUSION_CSV, ("variant", "true_class", *classes.names), matrix_rows, set())
    for variant, summary in report["variants"].items():
        plot_confusion_matrix(np.array(summary["confusion_matrix"]), classes.names, out_dir / confusion_png(variant),
                              title=f"{variant}: confusion matrix (rows: true class)")
    if candidates:
        plot_worst_tiles(out_dir / WORST_PNG, candidates, classes)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict], scores: set[str]) -> None:
    """Rows as CSV; score columns with 6 decimals, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[key] is None else f"{row[key]:.6f}" if key in scores else row[key]
                         for key in columns])
    write_text(path, buffer.getvalue())


def _stack_padded(arrays: Sequence[np.ndarray], fill) -> np.ndarray:
    """Stack tiles of different sizes, padding bottom/right with ``fill`` (plot_predictions needs one array)."""
    height = max(array.shape[0] for array in arrays)
    width = max(array.shape[1] for array in arrays)
    out = np.full((len(arrays), height, width, *arrays[0].shape[2:]), fill, dtype=arrays[0].dtype)
    for index, array in enumerate(arrays):
        out[index, : array.shape[0], : array.shape[1]] = array
    return out


def plot_worst_tiles(path: Path, candidates: Sequence[tuple], classes: ClassSet | None = None) -> Path:
    """Bands as RGB, truth, prediction and errors of each tile, worst first.

    ``candidates``: (mcc, iou or mean IoU, name, TileData, prediction) tuples. The RGB stretch is the
    1st-99th percentile of the shown tiles' finite pixels, so the figure does not depend on a run's
    statistics (a ``--pred`` evaluation has none).
    """
    from keras_glacier.plots import plot_predictions

    classes = classes or ClassSet.binary()
    tiles: list[TileData] = [item[3] for item in candidates]
    images = _stack_padded([tile.image for tile in tiles], np.nan)
    truths = _stack_padded([tile.label for tile in tiles], IGNORE_INDEX)
    if classes.multiclass:
        eye = np.eye(classes.num_classes, dtype=np.float32)
        shown = _stack_padded([eye[np.asarray(item[4], np.int64)] for item in candidates], 0.0)
        label = "mIoU"
    else:
        shown = _stack_padded([np.asarray(item[4], np.float32) for item in candidates], 0.0)
        label = "IoU"
    pixels = images.reshape(-1, images.shape[-1])
    pixels = np.where(np.isfinite(pixels), pixels, np.nan)
    lo, hi = np.nanpercentile(pixels, 1, axis=0), np.nanpercentile(pixels, 99, axis=0)
    titles = [f"{name}\nMCC {mcc:.3f}  {label} {score:.3f}" for mcc, score, name, *_ in candidates]
    return plot_predictions(images, truths, shown, path, lo=lo, hi=hi, titles=titles,
                            class_names=classes.names if classes.multiclass else None)


def format_table(report: dict) -> str:
    """The printed summary: per variant and averaging, scores as columns (multi-class: then per class)."""
    lines = [f"{report['num_tiles']} tiles ({report['subset']}) from {report['labels_from']}"]
    if report.get("task") == "multiclass":
        for variant, summary in report["variants"].items():
            lines.extend(format_multiclass(summary, variant))
        return "\n".join(lines)
    lines.append(f"{'variant':<8} {'averaging':<14}" + "".join(f"{name:>10}" for name in SCORE_NAMES))
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
        description="Score glacier masks against labels: MCC, IoU, F1, precision and recall (per class for "
        "multi-class masks and models), pooled over all pixels and as the mean of per-tile scores, and the "
        "confusion matrix (label 255 of binary labels and no-data pixels ignored).",
    )
    parser.add_argument("--labels-from", required=True, type=Path,
                        help="dataset with labels: HKH slice_<i>_image_<j>.npy + mask files, or band folders "
                        "Band1..BandN with label/")
    parser.add_argument("--pred", type=Path, default=None,
                        help="folder of predicted mask TIFFs named as predict writes them (Band1 file name; "
                        "<stem>.tif for npy slices): binary 0/255, 0/1 or probabilities; multi-class the phase-2 "
                        "values 0/85/170/255 (background, glacier or clean ice, debris, lake)")
    parser.add_argument("--model", default=None,
                        help="run folder or .keras file: predict on the fly and score with and without TTA")
    parser.add_argument("--out", required=True, type=Path,
                        help=f"report folder for {PER_TILE_CSV}, {METRICS_JSON}, {CONFUSION_CSV}, "
                        f"confusion_<variant>.png and {WORST_PNG} (created)")
    parser.add_argument("--split", type=Path, default=None,
                        help="a run's split.json (or the run folder): evaluate only the tiles of --subset")
    parser.add_argument("--subset", choices=SUBSETS, default=None,
                        help="with --split: which side of the split to evaluate (default val)")
    parser.add_argument("--bands", type=bands_argument, default=None,
                        help="npy slices only: comma-separated channels (default: the run's config.json, else "
                        "the competition preset 0,1,2,4,5); they also define no-data pixels, which are ignored")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary: glacier when probability > threshold, for --model and probability TIFFs "
                        "(default: the model's stored threshold, else 0.5)")
    add_tiling_arguments(parser, batch_help="tiles read at a time, and with --model images per forward pass",
                         tta=False, only="--model: ")
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
