"""``python -m keras_glacier.predict MODEL --scene PATH --out DIR``: the scene mode of the predict command.

``keras_glacier.predict.main`` hands any command line with ``--scene`` to :func:`main`, so the tile
mode's parser stays as it is; the shared flags (window, overlap, batch size, TTA, threshold,
probabilities) mean the same in both.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from keras_glacier.scenes.predict import DEFAULT_MIN_AREA


def build_parser() -> argparse.ArgumentParser:
    from keras_glacier.predict import add_tiling_arguments

    parser = argparse.ArgumentParser(
        prog="python -m keras_glacier.predict",
        description="Predict a whole Landsat scene: a georeferenced mask GeoTIFF in the model's class values, "
        "and outlines (GeoJSON and GeoPackage) with the area of each polygon. Needs pip install -e '.[geo]'.",
    )
    parser.add_argument("model", help="run folder (its model.keras is used) or a .keras file")
    parser.add_argument("--scene", required=True, type=Path,
                        help="a multi-band GeoTIFF (bands named by their descriptions) or a folder of per-band "
                        "GeoTIFFs (LC08_..._SR_B2.TIF, LE07_..._B1.TIF, B2.tif, ...)")
    parser.add_argument("--out", required=True, type=Path, help="folder for <scene>_mask.tif and the outlines")
    parser.add_argument("--band-map", action="append", default=None, metavar="BAND=SOURCE,...",
                        help="feed a model band from a given file, scene band name or (for a stack) band number, "
                        "e.g. B6_VCID1=LE07_x_B6_VCID_1.TIF or B1=2; repeatable; unmapped bands are matched by name")
    parser.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                        help=f"leave outline polygons smaller than this many km2 out (default {DEFAULT_MIN_AREA}, "
                        f"the RGI's smallest glacier); the mask keeps every pixel")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write <scene>_probabilities.tif (float32, one band per output)")
    add_tiling_arguments(parser, batch_help="images per forward pass")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary models: glacier where probability > this (default: the model's, else 0.5)")
    return parser


def run_job(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_glacier.scenes.bands import parse_band_map
    from keras_glacier.scenes.predict import predict_scene

    summary = predict_scene(
        args.model, args.scene, args.out, band_map=parse_band_map(args.band_map), tta=not args.no_tta,
        window=args.window, overlap=args.overlap, batch_size=args.batch_size, threshold=args.threshold,
        probabilities=args.probabilities, min_area=args.min_area,
    )
    print(summary.line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from keras_glacier.cli import run

    return run(run_job, argv)
