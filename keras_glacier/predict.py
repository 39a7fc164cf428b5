"""``python -m keras_glacier.predict``: glacier masks from a trained Keras model, written like the submission's.

The masks are indistinguishable in form from ``solution.maskgeration``'s: one uncompressed uint8
TIFF per tile (0/255 for a binary model; each class's phase-2 value, 0/85/170/255, for a
multi-class model), named after the tile's Band1 file (``<stem>.tif`` for npy slices), same
height and width, Band1's GeoTIFF tags, no-data pixels background, written atomically. That is
because the same code does it: ``solution.predict_tiles`` (flip TTA, padding, overlapping windows)
fed with a jit-compiled Keras forward, then ``solution.classify`` / ``encode_classes`` /
``write_values_tiff``. A pixel is glacier when its probability is strictly above the threshold (the
model's, chosen in training; 0.5 when it has none), as in ``solution.py`` and ``keras_glacier.metrics``;
a multi-class pixel takes the most probable class.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.data.errors import InputError
from keras_glacier.data.fileio import atomic_write
from keras_glacier.data.sources import TIFF, discover
from keras_glacier.inference import (
    band_names_warning,
    bands_argument,
    check_band_count,
    check_output_folder,
    check_threshold,
    check_tiling,
    choose_bands,
    iter_chunks,
    keras_forward,
    load_run,
    make_folder,
    output_name,
    predict_probabilities,
    reference_tiff,
    shared,
    solution_module,
)

# The tiling defaults have one definition, solution.py's (the submission tiles the same way).
from solution import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_WINDOW  # noqa: E402

PROBABILITY_FOLDER = "probabilities"


@dataclass(frozen=True)
class PredictSummary:
    num_tiles: int
    seconds: float
    out_dir: Path
    mask_paths: tuple[Path, ...]

    def line(self, tta: bool) -> str:
        per_tile = self.seconds / self.num_tiles if self.num_tiles else 0.0
        return (
            f"predicted {self.num_tiles} tiles in {self.seconds:.1f} s ({per_tile:.2f} s/tile, "
            f"TTA {'on' if tta else 'off'}) -> {self.out_dir}"
        )


def write_probability_tiff(path: Path, probability: np.ndarray, reference_path: str | None) -> None:
    """Float32 probabilities with the same georeferencing as the mask, written atomically.

    Binary: one band, the glacier probability; K classes: K bands (planes), one per class.
    """
    import tifffile

    tags = shared("geotiff_tags", reference_path) if reference_path is not None else []
    data = np.ascontiguousarray(probability, dtype=np.float32)
    options = {}
    if data.ndim == 3:
        data = np.ascontiguousarray(np.moveaxis(data, -1, 0))
        options = {"planarconfig": "separate"}
    write = partial(
        tifffile.imwrite, data=data, photometric="minisblack", compression=None, metadata=None, **options
    )
    atomic_write(path, lambda tmp: write(tmp, extratags=tags))


def predict_folder(
    model,
    data: str | Path,
    out: str | Path,
    tta: bool = True,
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float | None = None,
    bands: Sequence[int] | None = None,
    probabilities: bool = False,
    progress: bool | None = None,
) -> PredictSummary:
    """Write a mask (and with ``probabilities`` a float32 map under ``out/probabilities/``) per tile.

    ``model``: run folder, ``.keras`` file or a ``keras.Model``. ``data``: band folders or npy slices
    (``keras_glacier.data.discover``). ``bands`` only matters for npy slices (default: the run's
    config.json, else DEFAULT_BANDS); band folders are read whole. ``threshold`` (binary models):
    default the model's (its configuration, else the run's config.json, else 0.5). A warning goes
    to stderr when the data's band names say other bands than the model was trained on.
    ``progress=None``: a progress bar only on a terminal.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    check_tiling(window, overlap, batch_size)
    check_threshold(threshold)
    source = discover(data)
    out = Path(out)
    check_output_folder(out, source)
    loaded = load_run(model)
    chosen = choose_bands(source, bands, loaded.config)
    check_band_count(loaded, source, chosen)
    settings = dict(loaded.settings)
    if threshold is not None:
        settings["threshold"] = threshold
    warning = band_names_warning(loaded, source, chosen)
    if warning:
        print(f"warning: {loaded.name}: {warning}", file=sys.stderr)
    make_folder(out)
    if probabilities:
        make_folder(out / PROBABILITY_FOLDER)
    forward = keras_forward(loaded.model)
    solution = solution_module()
    paths = []
    # Labels play no part in a prediction: band-folder tiles are read without them (npy slices
    # always come with their masks, which read_sample then checks).
    samples = [replace(sample, label_path=None) if sample.kind == TIFF else sample for sample in source.samples]
    bar = tqdm(total=len(samples), desc="glacier masks", unit="tile", file=sys.stderr,
               disable=None if progress is None else not progress)
    with bar:
        for chunk in iter_chunks(samples, chosen, batch_size):
            maps = predict_probabilities(forward, [tile.image for tile in chunk], tta, window, overlap, batch_size)
            for tile, probability in zip(chunk, maps):
                name = output_name(tile.sample)
                reference = reference_tiff(tile.sample)
                values = solution.encode_classes(solution.classify(probability, settings), settings)
                try:
                    solution.write_values_tiff(out / name, values, reference)
                except solution.InputError as exc:
                    raise InputError(str(exc)) from exc
                if probabilities:
                    write_probability_tiff(out / PROBABILITY_FOLDER / name, probability, reference)
                paths.append(out / name)
                bar.update(1)
    return PredictSummary(len(paths), time.perf_counter() - start, out, tuple(paths))


def add_tiling_arguments(parser: argparse.ArgumentParser, *, batch_help: str, tta: bool = True,
                         only: str = "") -> None:
    """The flags of sliding-window inference, one meaning for every command that predicts
    (tiles here, whole scenes in keras_glacier.scenes.cli, on-the-fly scoring in evaluate).

    ``batch_help`` says what one batch is for that command; ``only`` prefixes the window flags'
    help where they apply to one mode (evaluate: ``"--model: "``); ``tta=False`` leaves out
    ``--no-tta`` for a command that decides the views itself.
    """
    if tta:
        parser.add_argument("--no-tta", action="store_true",
                            help="predict each window once instead of averaging the four flips (4x faster)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help=f"{only}inputs larger than this are cut into overlapping windows of this size, a "
                        f"multiple of 16 (default {DEFAULT_WINDOW})")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                        help=f"{only}minimum overlap of neighbouring windows, blended linearly (default "
                        f"{DEFAULT_OVERLAP})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"{batch_help}, each TTA flip counting as one (default {DEFAULT_BATCH_SIZE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_glacier.predict",
        description="Predict glacier masks with a trained Keras model: one uint8 TIFF per tile (0/255 binary, "
        "0/85/170/255 multi-class), named and georeferenced like the input, exactly as solution.py writes them.",
    )
    parser.add_argument("model", help="run folder (its model.keras is used) or a .keras file")
    parser.add_argument("--data", required=True, type=Path,
                        help="tiles to predict: band folders Band1..BandN/*.tif, or HKH slice_<i>_image_<j>.npy files")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the masks (created); must not be an input folder")
    add_tiling_arguments(parser, batch_help="tiles read at a time, and images per forward pass")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary models: a pixel is glacier when its probability is strictly above this "
                        "(default: the model's threshold, chosen in training; 0.5 when it has none)")
    parser.add_argument("--bands", type=bands_argument, default=None,
                        help="npy slices only: comma-separated channels to feed the model (default: the run's "
                        "config.json, else the competition preset 0,1,2,4,5); band folders are always read whole, "
                        "in band order")
    parser.add_argument("--probabilities", action="store_true",
                        help=f"also write float32 probability TIFFs to OUT/{PROBABILITY_FOLDER}/")
    parser.add_argument("--scene", help="instead of --data: a whole Landsat scene to a georeferenced mask and outlines "
                        "(MODEL --scene PATH --out DIR --help lists its options)")
    return parser


def run_job(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(str(arg).split("=", 1)[0] == "--scene" for arg in argv):  # whole-scene mode, with its own flags
        from keras_glacier.scenes.cli import run_job as scene_job

        return scene_job(argv)
    args = build_parser().parse_args(argv)
    summary = predict_folder(
        args.model, args.data, args.out, tta=not args.no_tta, window=args.window, overlap=args.overlap,
        batch_size=args.batch_size, threshold=args.threshold, bands=args.bands,
        probabilities=args.probabilities,
    )
    print(summary.line(not args.no_tta))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from keras_glacier.cli import run

    return run(run_job, argv)


if __name__ == "__main__":
    sys.exit(main())
