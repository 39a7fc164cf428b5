"""Run every benchmark and write one markdown report (default ``benchmarks/RESULTS.md``).

Sections: machine, training step (Keras+JAX vs PyTorch eager), inference (solution.py tiling, naive
loop, Keras predict), data loader, Keras vs PyTorch parity. A section that fails (or whose module is
missing) is reported as such in the file; the others still run, and the exit status is then 1.
Nothing here asserts speed.

    python -m benchmarks            # full settings (about 10 minutes on 2 cores)
    python -m benchmarks --quick    # tiny settings (a few minutes), e.g. to check nothing rotted
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from benchmarks.common import REUSE_MEMORY_ENV, load_average, machine, machine_table, markdown_table
from keras_glacier.fileio import write_text

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = ("train", "train_reuse", "inference", "loader", "parity")
TITLES = {
    "machine": "Machine",
    "train": "Training step: Keras+JAX (jit) vs PyTorch eager",
    "train_reuse": "Training step with freed memory kept in the process (`--malloc reuse`, both frameworks)",
    "inference": "Inference: solution.py tiling vs naive loop, and Keras predict",
    "loader": "Data loader",
    "parity": "Keras vs PyTorch parity",
}

#: (full, quick) keyword arguments of each benchmark's run().
SETTINGS = {
    # Quick: one round (each contender in its own process once) of the smaller encoder, which compiles
    # in less time, and the allocator's rerun in one process: all a smoke run needs.
    "train": (
        {"settings": ((4, 256), (2, 512)), "steps": 5},
        {"settings": ((2, 64),), "steps": 2, "flops": False, "rounds": 1, "encoder": "resnet18"},
    ),
    "train_reuse": (
        {"settings": ("4x256", "2x512"), "steps": 5},
        {"settings": ("2x64",), "steps": 1, "rounds": 1, "encoder": "resnet18", "same_process": True},
    ),
    "inference": (
        {"size": 512, "tiles": 4, "rounds": 3},
        {"size": 64, "tiles": 1, "rounds": 1, "memory": "sampled"},
    ),
    "loader": ({"tiles": 16, "size": 512, "batch_size": 2, "epochs": 3}, {"tiles": 4, "size": 64, "epochs": 1}),
    "parity": ({"sizes": (64, 256, 512)}, {"sizes": (64,)}),
}


REUSE_NOTES = (
    "Same benchmark as above, run in a separate process whose glibc allocator keeps freed memory "
    "(keras_glacier.memory.REUSE_MEMORY_ENV): XLA:CPU's per-step temporary buffer is no longer unmapped and "
    "page-faulted back in every step, and torch's allocator benefits too. Compare with the page_faults column of "
    "the table above."
)


class SectionResult:
    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict] = []
        self.text = ""
        self.seconds = 0.0
        self.failed = False


def run_train_reuse(settings, steps: int, rounds: int = 2, encoder: str = "resnet34",
                    same_process: bool = False) -> list[dict]:
    """The training-step benchmark in a fresh process with ``--malloc reuse``.

    glibc reads these settings when a process starts, so they cannot be switched on for this one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "benchmarks.train_step", "--no-flops", "--steps", str(steps), "--rounds",
                   str(rounds), "--encoder", encoder, "--json", str(out), "--settings", *settings]  # fmt: skip
        command += ["--same-process"] if same_process else []
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, **REUSE_MEMORY_ENV}
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} exited with {done.returncode}: {done.stderr[-2000:]}")
        return json.loads(out.read_text())


def _run_section(name: str, quick: bool, context: dict) -> SectionResult:
    result = SectionResult(name)
    kwargs = dict(SETTINGS[name][1 if quick else 0])
    start = time.perf_counter()
    if name == "train_reuse":
        try:
            result.rows = run_train_reuse(**kwargs)
            result.text = markdown_table(result.rows) + "\n\n" + REUSE_NOTES
        except Exception as exc:  # noqa: BLE001  (reported in the file, like any other section)
            result.failed = True
            result.text = f"_Failed: {type(exc).__name__}: {exc}_"
        result.seconds = time.perf_counter() - start
        return result
    try:
        module = importlib.import_module(f"benchmarks.{name if name != 'train' else 'train_step'}")
    except ImportError as exc:
        result.text = f"_Not run: benchmarks/{name}.py could not be imported ({exc})._"
        result.failed = name != "parity"  # parity belongs to the converter and may legitimately be absent
        return result
    try:
        if name == "loader" and context.get("step_seconds"):
            kwargs["step_seconds"] = context["step_seconds"]
        result.rows = module.run(**kwargs)
        result.text = _format(name, module, result.rows)
    except Exception as exc:  # noqa: BLE001  (one broken benchmark must not hide the others' figures)
        result.failed = True
        result.text = f"_Failed: {type(exc).__name__}: {exc}_\n\n```\n{traceback.format_exc()[-3000:]}\n```"
    result.seconds = time.perf_counter() - start
    if name == "train" and result.rows:
        # The loader's x_train_step column: tiles/s served over tiles/s a Keras step consumes at batch 2.
        for row in result.rows:
            if row["batch x crop"].startswith("2x"):
                context["step_seconds"] = row["keras_s"]
    return result


def _format(name: str, module, rows: list[dict]) -> str:
    if name == "parity" and hasattr(module, "markdown_table"):
        table = module.markdown_table(rows)
        return "max |Keras - PyTorch| per stage, float32 CPU, batch 1 (max |value| in parentheses)\n\n" + table
    table = markdown_table(rows)
    notes = getattr(module, "NOTES", "")
    if name == "loader":
        notes = (
            "Tiles/s of GlacierSequence with training augmentation (random crop, flips/rotations, "
            "brightness/contrast, noise) over whole epochs, threads calling __getitem__ as Keras' "
            "enqueuer does; the last column = tiles/s served / tiles/s one Keras training step consumes "
            "at batch 2 (from the training-step table)."
        )
    return table + (f"\n\n{notes}" if notes else "")


def render(info: dict, results: list[SectionResult], command: str, total_seconds: float) -> str:
    lines = [
        "# keras-glacier benchmarks",
        "",
        f"Command: `{command}` (took {total_seconds:.0f} s; load at the end {load_average()}).",
        "Timings on a shared machine vary: compare the ratios within one table, measured in the same run.",
        "",
        f"## {TITLES['machine']}",
        "",
        machine_table(info),
    ]
    for result in results:
        lines += ["", f"## {TITLES[result.name]}", "", result.text, "", f"_Section time: {result.seconds:.0f} s._"]
    return "\n".join(lines) + "\n"


#: Sections that standalone benchmarks write into the report (``python -m benchmarks.accuracy``: 30+
#: minutes of training, too slow for this run); rewriting the report keeps them as they are.
KEPT_SECTIONS = ("Accuracy on everest-west",)


def kept_sections(path: Path) -> str:
    """The :data:`KEPT_SECTIONS` of the report at ``path`` (empty when absent), to append to a new report."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    kept = []
    for section in ("\n" + text).split("\n## ")[1:]:
        if section.partition("\n")[0].strip() in KEPT_SECTIONS:
            kept.append("\n## " + section.rstrip("\n") + "\n")
    return "".join(kept)


def run(quick: bool = False, out: str | Path = DEFAULT_OUT, sections=SECTIONS, command: str | None = None,
        echo: Callable[[str], None] | None = print) -> list[SectionResult]:  # fmt: skip
    """Runs the chosen sections in order and writes the report; returns the section results."""
    start = time.perf_counter()
    info = machine()
    context: dict = {}
    results = []
    for name in SECTIONS:
        if name not in sections:
            continue
        if echo:
            echo(f"[benchmarks] {name} ({'quick' if quick else 'full'}) ...")
        result = _run_section(name, quick, context)
        results.append(result)
        if echo:
            echo(f"{result.text}\n[benchmarks] {name}: {result.seconds:.0f} s")
    command = command or "python -m benchmarks" + (" --quick" if quick else "")
    report = render(info, results, command, time.perf_counter() - start)
    write_text(Path(out), report + kept_sections(Path(out)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings (about a minute): checks that the benchmarks still run"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="markdown report to write (default benchmarks/RESULTS.md)"
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="benchmarks to run (default: all)"
    )
    args = parser.parse_args(argv)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = run(quick=args.quick, out=args.out, sections=args.sections, command=command.strip())
    print(f"[benchmarks] wrote {args.out}")
    failed = [r.name for r in results if r.failed]
    if failed:
        print(f"[benchmarks] failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
