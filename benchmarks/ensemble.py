"""``python -m benchmarks.ensemble``: runs kept by different accuracy commands, scored as one ensemble.

``python -m benchmarks.accuracy --seeds 0,1,2`` ensembles the seeds of one command. Whether networks
trained differently (another loss, another length) make a better ensemble than seeds of one recipe
is the same question asked across commands: each member is ``RUNS_DIR:SEED``, the ``--runs-dir`` of
an earlier ``benchmarks.accuracy`` command and one of its seeds. Nothing is trained: every fold's
held-out probabilities are read back from the members' kept ``accuracy.npz``, averaged as a
``model.pth`` packed from those runs (``python -m convert RUN_A RUN_B``) averages them, and scored
with the members' own rows beside the ensemble's. The threshold is the one the members' flags decide
at (0.5 without validation) when they agree, else it is chosen on the averaged validation row, as
``benchmarks.accuracy`` does; members that agree on neither are refused.

    python -m benchmarks.ensemble RUNS45:0 RUNS45:1 RUNSFOCAL:0
    python -m benchmarks.ensemble RUNS45:0 RUNSCROP:0 --variant crop128
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.accuracy import ensemble_row, ensemble_threshold, kept_result, render_table


def parse_member(text: str) -> tuple[Path, int]:
    """``RUNS_DIR:SEED`` -> (folder, seed)."""
    folder, sep, seed = text.rpartition(":")
    if not sep or not folder or not seed.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a member as RUNS_DIR:SEED, e.g. runs/acc45:0")
    return Path(folder), int(seed)


def member_runs(folder: Path, seed: int, variant: str) -> dict[str, Path]:
    """The member's finished runs by held-out row: ``{"00": folder/default-seed0-test00-valnone, ...}``."""
    runs = {}
    for record in sorted(folder.glob(f"{variant}-seed{seed}-*/accuracy.json")):
        row = json.loads(record.read_text(encoding="utf-8"))["row"]
        runs[row.get("scored", row.get("val", ""))] = record.parent
    if not runs:
        raise SystemExit(f"error: {folder} holds no finished {variant} run of seed {seed} "
                         "(benchmarks.accuracy --runs-dir keeps them)")
    return runs


def load_member(run_dir: Path) -> tuple[dict, dict, tuple]:
    """(settings, row, maps) of a kept run, whatever flags it was trained with."""
    settings = json.loads((run_dir / "accuracy.json").read_text(encoding="utf-8"))["settings"]
    row, maps = kept_result(run_dir, settings)
    return settings, row, maps


def common_threshold(settings: Sequence[dict], have_validation: bool, label: str) -> float | None:
    """The threshold every member decides at, or None to choose it on the averaged validation row."""
    fixed = {ensemble_threshold(s) for s in settings}
    if len(fixed) == 1 and None not in fixed:
        return fixed.pop()
    if have_validation:
        return None
    raise SystemExit(f"error: {label}: the members decide at different thresholds ({sorted(fixed, key=str)}) "
                     "and not all kept a validation row to choose one on")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", type=parse_member, metavar="RUNS_DIR:SEED",
                        help="a --runs-dir of benchmarks.accuracy and one of its seeds; at least two")
    parser.add_argument("--variant", default="default", help="the runs' variant in those folders (default: default)")
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        parser.error("an ensemble needs at least two members")
    names = [f"{folder.name}:{seed}" for folder, seed in args.members]
    runs = [member_runs(folder, seed, args.variant) for folder, seed in args.members]
    rows_scored = sorted(runs[0])
    for name, mine in zip(names[1:], runs[1:]):
        if sorted(mine) != rows_scored:
            raise SystemExit(f"error: {name} scored rows {', '.join(sorted(mine))}, {names[0]} rows "
                             f"{', '.join(rows_scored)}: members must hold out the same rows")
    rows, ensembles = [], []
    for fold, scored in enumerate(rows_scored):
        loaded = [load_member(mine[scored]) for mine in runs]
        members = []
        for name, (_, row, maps) in zip(names, loaded):
            rows.append({**row, "variant": name, "fold": fold})
            members.append((row["seed"], *maps[:2], row["wall s"], *maps[2:]))
        threshold = common_threshold([s for s, _, _ in loaded], all(len(m) > 4 for m in members), f"row {scored}")
        try:
            row = ensemble_row("+".join(names), fold, scored, members, loaded[0][1].get("val"), threshold=threshold)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        ensembles.append(row)
    print(render_table([*rows, *ensembles]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
