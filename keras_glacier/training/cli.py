"""``python -m keras_glacier.train``: the command line, derived from :class:`TrainConfig`'s fields.

Each field is one flag (its name, type, choices and help from the field), so the flags and the
config cannot drift apart. Some flags are not settings of the run but of this invocation
(:data:`INVOCATION_FLAGS`): ``--resume``, ``--overwrite``, ``--malloc``, and the flags that join a
job of several processes (``--coordinator``, ``--num-processes``, ``--process-id`` differ per
process, so they cannot be saved settings that every process checks for equality).

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
from keras_glacier.training.config import AUTO_OR_NUMBER, RESUMABLE, TrainConfig, flag_of

#: Flags that are about this invocation, not settings saved with the run.
INVOCATION_FLAGS = ("resume", "overwrite", "malloc", "coordinator", "num_processes", "process_id",
                    "coordinator_timeout")
#: ``--coordinator none``: do not look for a cluster (a plain single-process run wherever it runs).
NO_CLUSTER = "none"


def _argparse_type(parse: typing.Callable[[str], object]) -> typing.Callable[[str], object]:
    """``parse`` as an argparse ``type=``: its UsageError becomes argparse's one-line usage error."""
    def argument(text: str):
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


def _value_type(name: str, hint) -> typing.Callable[[str], object]:
    if name in AUTO_OR_NUMBER:
        return _argparse_type(AUTO_OR_NUMBER[name])
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
        description="Train the DeepLabV3+ (ResNet-34 or ResNet-18, ASPP+CBAM) glacier segmenter with XLA-compiled "
        "Keras+JAX, then export model.keras and the competition's model.pth. Every training setting is a field "
        "of keras_glacier.TrainConfig, the Python API of the same job (--resume and --overwrite are keywords of "
        "keras_glacier.train; --malloc and the flags of several processes belong to the command line).",
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
    from keras_glacier.distribution.cluster import DEFAULT_TIMEOUT_S

    cluster = parser.add_argument_group(
        "several processes (data parallelism over all their devices; run the same command on every "
        "process, each with its own --process-id; process 0 writes the run folder)")
    cluster.add_argument("--coordinator", metavar="HOST:PORT|auto|none",
                         help="address of process 0, where the job's coordinator listens (the same on every "
                         "process). Without it, Keras' KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / "
                         "_PROCESS_ID variables, else a cluster jax detects (Cloud TPU pod slice, SLURM srun "
                         "with several tasks, Open MPI, Kubernetes) is joined; 'auto' insists on that detection, "
                         "'none' skips it (one process, whatever the environment says)")
    cluster.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the job")
    cluster.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    cluster.add_argument("--coordinator-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                         help="seconds to wait for the coordinator and for all processes to join "
                         f"(default {DEFAULT_TIMEOUT_S:g})")
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
    config = config_from_args(args)
    if args.coordinator != NO_CLUSTER:
        # Before anything touches a jax device. With no flag, no KERAS_DISTRIBUTION_* variable and no
        # cluster jax detects, this only reads the environment and returns (a single process).
        from keras_glacier import distribution

        distribution.initialize(args.coordinator, args.num_processes, args.process_id,
                                timeout_s=args.coordinator_timeout)
    train(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def main(argv: Sequence[str] | None = None, restart: bool = False) -> int:
    """The command line; ``restart`` (``python -m``) may first re-exec under ``--malloc``."""
    from keras_glacier.cli import run
    from keras_glacier.memory import restart_with_allocator

    if restart:
        args = build_parser().parse_args(argv)
        restart_with_allocator(args.malloc, "keras_glacier.train", sys.argv[1:] if argv is None else list(argv))
    return run(run_job, argv)
