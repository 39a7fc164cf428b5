"""Command line: ``python -m convert RUN_DIR_or_model.keras -o model.pth [--half] [--no-verify]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert.export import convert_model, resolve_keras_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description=(
            "Convert a trained keras-glacier model to the PyTorch state dict (model.pth) that solution.py "
            "loads. The file is written only if every weight maps onto solution.AttentionDeepLabV3Plus and "
            "the written file reproduces the Keras logits."
        ),
    )
    parser.add_argument(
        "source",
        help="a training run folder (its model.keras is used) or a .keras model file",
    )
    parser.add_argument(
        "-o",
        "--out",
        default=None,
        help="output .pth file (default: model.pth next to the .keras file)",
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="store weights as float16 (half the size; solution.load_model casts them back to float32); "
        "verified with a looser tolerance: max(5e-2, 1%% of the largest |logit|)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running both models on a probe batch (names and shapes are still checked)",
    )
    return parser


def run_job(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keras_path = resolve_keras_path(args.source)
    out = Path(args.out) if args.out else keras_path.with_name("model.pth")
    report = convert_model(keras_path, out, half=args.half, verify=not args.no_verify)
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """ConversionInputError: exit 2; ConversionError (refused after checking): exit 1 (keras_glacier.cli)."""
    from keras_glacier.cli import run

    return run(run_job, argv)


if __name__ == "__main__":
    sys.exit(main())
