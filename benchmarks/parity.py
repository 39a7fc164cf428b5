"""Keras vs PyTorch parity figures: max |difference| per network stage and end to end.

Builds the Keras model with random non-trivial weights (BatchNorm statistics included, logits
spread over about +-8 like a trained model's), converts it with the project's name map, and prints a
markdown table of max |Keras - PyTorch| for each stage at each input size (float32, CPU, eval mode).
The figure in parentheses is the stage's max |value|, for scale. Prints figures only; asserts
nothing (the tests hold the contract).

    python -m benchmarks.parity [--sizes 64 256 512] [--seed 0]
"""

from __future__ import annotations

import keras_glacier  # noqa: F401  (selects the Keras backend before keras is imported)

# isort: split

import argparse
import time

import torch

from convert.export import build_torch_module, model_config, probe_batch
from convert.name_map import keras_to_torch_state_dict
from convert.parity import PROBE_STATS as STATS
from convert.parity import randomize_weights, stage_differences
from keras_glacier.model import build_deeplab

DEFAULT_SIZES = (64, 256, 512)


def run(sizes=DEFAULT_SIZES, seed: int = 0) -> list[dict]:
    """One row per (size, stage): size, stage, max_abs_diff, max_abs_value, shape, seconds (per size)."""
    model = build_deeplab(num_bands=len(STATS["lo"]), stats=STATS)
    randomize_weights(model, seed=seed)
    module = build_torch_module(model_config(model))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in keras_to_torch_state_dict(model).items()})
    rows = []
    for size in sizes:
        start = time.perf_counter()
        stages = stage_differences(model, module, probe_batch(model, (1, size, size), seed=seed + size))
        seconds = time.perf_counter() - start
        rows += [{"size": size, **row, "seconds": seconds} for row in stages]
    return rows


def markdown_table(rows: list[dict]) -> str:
    sizes = list(dict.fromkeys(row["size"] for row in rows))
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    cell = {(row["stage"], row["size"]): row for row in rows}
    lines = [
        "| stage | " + " | ".join(f"{size}x{size}" for size in sizes) + " |",
        "| --- | " + " | ".join("---" for _ in sizes) + " |",
    ]
    for stage in stages:
        values = [cell[stage, size] for size in sizes]
        lines.append(
            f"| {stage} | "
            + " | ".join(f"{v['max_abs_diff']:.2g} ({v['max_abs_value']:.3g})" for v in values)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="square input sizes in pixels, multiples of 16 (default: 64 256 512)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    args = parser.parse_args(argv)
    if any(size % 16 for size in args.sizes):
        parser.error("every size must be a multiple of 16")
    rows = run(sizes=tuple(args.sizes), seed=args.seed)
    print("max |Keras - PyTorch| per stage, float32 CPU, batch 1 (max |value| in parentheses)\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
