"""``python -m keras_glacier.train``: the command line, derived from :class:`TrainConfig`'s fields.

Each field is one flag (its name, type, choices and help from the field), so the flags and the
config cannot drift apart. Three flags are not settings of the run but of this invocation:
``--resume``, ``--overwrite`` and ``--malloc`` (:data:`INVOCATION_FLAGS`).

Flags default to None in the parser so that "given" can be told from "left at its default":
``--resume`` takes the saved settings of the run and only accepts the fields of ``RESUMABLE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence

from keras_glacier.errors import UsageError
from keras_glacier.memory import ALLOCATORS
from keras_glacier.training.config import RESUMABLE, TrainConfig, flag_of, parse_threshold

#: Flags that are about this invocation, not settings saved with the run.
INVOCATION_FLAGS = ("resume", "overwrite", "malloc")


def _threshold_argument(text: str):
    try:
        return parse_threshold(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _value_type(name: str, hint) -> typing.Callable[[str], object]:
    if name == "threshold":
        return _threshold_argument
    args = set(typing.get_args(hint)) or {hint}
    if int in args:
        return int
    if float in args:
        return float
    return str


def _default_text(value) -> str:
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_glacier.train",
        description="Train the DeepLabV3+ (ResNet-34, ASPP+CBAM) glacier segmenter with XLA-compiled "
        "Keras+JAX, then export model.keras and the competition's model.pth. Every flag is a field of "
        "keras_glacier.TrainConfig, the Python API of the same job.",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = flag_of(f.name)
        if hints[f.name] is bool:  # a switch that flips the default
            parser.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None,
                                help=meta["help"])
            continue
        help_text = meta["help"]
        if f.default is not None and "default" not in help_text:
            help_text += f" (default {_default_text(f.default)})"
        parser.add_argument(flag, dest=f.name, type=_value_type(f.name, hints[f.name]), default=None,
                            choices=meta.get("choices"), metavar=meta.get("metavar"),
                            help=help_text.replace("%", "%%"))
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted or finished run in --out from its last completed epoch, "
                        f"with the settings saved in its config.json (only {', '.join(map(flag_of, RESUMABLE))} "
                        "may be given)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into an --out folder that already holds a run, replacing it")
    parser.add_argument("--malloc", choices=ALLOCATORS, default="reuse",
                        help="'reuse' (default): on Linux, restart once with glibc set to keep freed memory "
                        "(keras_glacier.memory), which makes CPU training steps 10-20%% faster and keeps the "
                        "peak heap until exit; 'default': run under the allocator settings as started")
    return parser


def given_settings(args: argparse.Namespace) -> dict:
    """The fields set on the command line (flags left out are absent)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the flags given over the defaults (or, with ``--resume``, over config.json)."""
    given = given_settings(args)
    if args.resume:
        if given.get("out") is None:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        saved = TrainConfig.from_run(given["out"])
        refused = sorted(set(given) - {"out", *RESUMABLE})
        if refused:
            raise UsageError(f"--resume continues {given['out']} with the settings of its config.json; only "
                             f"{', '.join(map(flag_of, RESUMABLE))} may be given, not "
                             f"{', '.join(map(flag_of, refused))}")
        return dataclasses.replace(saved, out=given["out"], **{k: given[k] for k in RESUMABLE if k in given})
    return TrainConfig(**given)


def run_job(argv: Sequence[str] | None = None) -> int:
    """Parse, train; user errors propagate to :func:`keras_glacier.cli.run`."""
    from keras_glacier.training.fit import train

    args = build_parser().parse_args(argv)
    train(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    return 0


def main(argv: Sequence[str] | None = None, restart: bool = False) -> int:
    """The command line; ``restart`` (``python -m``) may first re-exec under ``--malloc``."""
    from keras_glacier.cli import run
    from keras_glacier.memory import restart_with_allocator

    if restart:
        args = build_parser().parse_args(argv)
        restart_with_allocator(args.malloc, "keras_glacier.train", sys.argv[1:] if argv is None else list(argv))
    return run(run_job, argv)
