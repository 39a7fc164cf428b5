"""The run folder: choosing it without clobbering a run, what it holds, and the result of a run.

A run folder holds ``config.json`` (``TrainConfig`` as a dict: the settings, enough to resume),
``run.json`` (facts of the run that are not settings: the band indices and names used, the data
layout, the epoch size the sampler chose, devices, versions, the chosen decision threshold),
``stats.json``, ``split.json``, ``history.csv``, ``metrics.json``, the models and the figures.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from keras_glacier.errors import UsageError
from keras_glacier.fileio import write_json
from keras_glacier.training.config import TrainConfig

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
RUN_FILES = ("model.keras", "model.pth", "best.keras", "stats.json", CONFIG_FILE, RUN_FILE, "split.json",
             METRICS_FILE, "history.csv", "curves.png", "predictions.png")
#: ``RUN_DIR/validation-run``: a ``--refit`` run's validated run, which chose its epochs.
VALIDATION_RUN = "validation-run"
#: Folders of the parts of a run of several networks (--folds, --members, --refit's validated run).
PART_FOLDERS = ("fold-*", "member-*", VALIDATION_RUN)


@dataclass
class RunResult:
    """What :func:`keras_glacier.train` returns: where the run is and how well it did.

    ``metrics`` are the validation scores of the best epoch's model at the 0.5 threshold (the same
    numbers as that epoch's row of ``history.csv``), plus ``threshold`` and ``threshold_mcc`` (the
    binary decision threshold chosen for MCC on the validation tiles, and the MCC there). A run
    without validation (``--val-fraction 0``) has no such scores: its ``metrics`` are the last
    epoch's on its training crops (``train_`` + name), ``epochs``, ``tiles`` and ``threshold``.
    ``folds`` holds the result of each fold of a ``folds > 1`` run (then the other fields describe
    the first fold's folder's parent and the mean metrics); ``members`` each member's of a
    ``members > 1`` run, whose other fields are the ensemble's; ``validated`` the run that chose a
    ``--refit`` run's epochs and threshold, whose metrics are the refit's.
    """

    run_dir: Path
    config: TrainConfig
    metrics: dict
    model: Path | None = None
    model_pth: Path | None = None
    threshold: float | None = None
    conversion: object | None = None  # convert.ConversionReport
    folds: list[RunResult] = field(default_factory=list)
    members: list[RunResult] = field(default_factory=list)  # an ensemble's (``--members``), the others its own
    validated: RunResult | None = None  # a ``--refit`` run's validated run (RUN_DIR/validation-run)


def choose_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """Pick the run folder without ever clobbering a previous run by accident."""
    out = None if config.out is None else Path(config.out)
    if out is not None:
        blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise UsageError(f"--out {out}: {blocking} is a file, not a folder; give a run folder")
    if resume:
        if out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        if not (out / CONFIG_FILE).exists():
            raise UsageError(f"--resume: {out / CONFIG_FILE} does not exist, so there is no run to continue")
        return out
    if out is not None:
        existing = [name for name in RUN_FILES if (out / name).exists()] + (
            ["backup/"] if (out / "backup").exists() else []) + sorted(
            f"{p.name}/" for pattern in PART_FOLDERS for p in out.glob(pattern) if p.is_dir())
        if existing and not overwrite:
            raise UsageError(f"--out {out} already holds a run ({', '.join(existing[:3])}); "
                             "use --resume to continue it, --overwrite to replace it, or another --out")
        if existing:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "backup", ignore_errors=True)
            for part in [p for pattern in PART_FOLDERS for p in out.glob(pattern)]:
                shutil.rmtree(part, ignore_errors=True)
        return out
    base = Path("runs") / (Path(config.data).resolve().name if config.data else "demo")
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_resumed_config(run_dir: Path, config: TrainConfig) -> None:
    """A resumed run keeps its settings: refuse a config that differs beyond ``RESUMABLE`` fields."""
    from keras_glacier.training.config import RESUMABLE, flag_of

    saved = TrainConfig.from_run(run_dir).to_dict()
    given = config.to_dict()
    differing = sorted(k for k in saved if k not in ("out", *RESUMABLE) and saved[k] != given[k])
    if differing:
        details = ", ".join(f"{flag_of(k)} {given[k]!r} (saved {saved[k]!r})" for k in differing)
        raise UsageError(f"--resume: {run_dir} was trained with other settings: {details}")


def finished_run(path: Path, config: TrainConfig) -> RunResult | None:
    """A run that already ended in ``path`` (its model.keras and metrics.json written), or None to (re)train it."""
    path = Path(path)
    if not ((path / "model.keras").is_file() and (path / METRICS_FILE).is_file()):
        return None
    metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
    return RunResult(path, config, metrics, model=path / "model.keras", threshold=metrics.get("threshold"))


def read_run_facts(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_facts(run_dir: Path, **facts) -> None:
    """Merge ``facts`` into run.json (atomically)."""
    write_json(Path(run_dir) / RUN_FILE, {**read_run_facts(run_dir), **facts})


def print_table(title: str, metrics: dict, stream=None) -> None:
    import sys

    stream = sys.stdout if stream is None else stream
    width = max(len(k) for k in metrics)
    print(f"\n{title}", file=stream)
    print(f"| {'metric'.ljust(width)} | value  |", file=stream)
    print(f"|{'-' * (width + 2)}|--------|", file=stream)
    for key, value in metrics.items():
        print(f"| {key.ljust(width)} | {value:.4f} |", file=stream)
