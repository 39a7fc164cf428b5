"""Command line: ``python -m convert RUN_DIR_or_model.keras [MORE ...] -o model.pth [--half] [--no-verify]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert.export import convert_models, resolve_keras_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description=(
            "Convert trained keras-glacier models to the model.pth that solution.py loads: one run gives one "
            "network, several runs (folds or seeds) one ensemble whose probabilities solution.py averages. "
            "The file is written only if every weight maps onto solution.AttentionDeepLabV3Plus and the "
            "written file reproduces each model's Keras logits."
        ),
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="source",
        help="training run folders (their model.keras is used) or .keras model files; several make an ensemble",
    )
    parser.add_argument(
        "-o",
        "--out",
        default=None,
        help="output .pth file (default: model.pth next to the first .keras file)",
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="store weights as float16 (half the size; solution.load_model casts them back to float32); "
        "verified with a looser tolerance: max(5e-2, 1%% of the largest |logit|). Whatever would exceed "
        "200 MB in float32 (an ensemble of two ResNet-34 networks) is stored in float16 without this flag",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running both models on a probe batch (names and shapes are still checked)",
    )
    return parser


def run_job(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keras_paths = [resolve_keras_path(source) for source in args.sources]
    out = Path(args.out) if args.out else keras_paths[0].with_name("model.pth")
    half = True if args.half else None
    report = convert_models(keras_paths, out, half=half, verify=not args.no_verify)
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """ConversionInputError: exit 2; ConversionError (refused after checking): exit 1 (keras_glacier.cli)."""
    from keras_glacier.cli import run

    return run(run_job, argv)


if __name__ == "__main__":
    sys.exit(main())
