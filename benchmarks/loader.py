"""Loader throughput: tiles/s of GlacierSequence with training augmentation, with and without cache.

Generates its own demo dataset (HKH layout, 15-channel float32 slices) in a temporary folder, then
times full epochs of training batches (random crop, flips/rotations, brightness/contrast, noise)
the way Keras consumes them: ``workers`` threads calling ``__getitem__`` concurrently, as Keras'
``OrderedEnqueuer`` does for ``use_multiprocessing=False``, plus a single-thread figure. The first
epoch of the cached configuration includes writing the cache, so it is reported separately and the
figures are taken over the following epochs. The files sit in the OS page cache after generation,
so "no cache" measures decoding 15-channel slices and selecting bands, not disk speed.
``cpu_ms_per_tile`` (process CPU time per tile, all threads) is the figure to compare on a busy
machine, where wall-clock tiles/s depend on what else runs.

The issue's target is at least 3x the tiles/s that one training step consumes; pass
``--step-seconds`` (seconds per training step at ``--batch-size``) to print that ratio.

    python -m benchmarks.loader --size 512 --tiles 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.data import AugmentConfig, compute_stats, discover, make_demo_dataset
from keras_glacier.data.dataset import GlacierSequence


def _epoch_seconds(sequence: GlacierSequence, workers: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one epoch."""
    start, cpu_start = time.perf_counter(), time.process_time()
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(sequence.__getitem__, range(len(sequence))):
                pass
    else:
        for index in range(len(sequence)):
            sequence[index]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    sequence.on_epoch_end()
    return seconds, cpu_seconds


def run(
    tiles: int = 16,
    size: int = 512,
    crop: int | None = None,
    batch_size: int = 2,
    workers: int = 2,
    epochs: int = 3,
    seed: int = 0,
    work_dir: str | Path | None = None,
    step_seconds: float | None = None,
) -> list[dict]:
    """Time the loader; returns one row per configuration (see ``main`` for the table)."""
    crop = crop or size
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        scenes = max(1, tiles // 8)
        make_demo_dataset(tmp / "data", scenes=scenes, tiles_per_scene=-(-tiles // scenes), size=size, seed=seed)
        source = discover(tmp / "data")
        bands = source.default_bands
        stats = compute_stats(source.samples, bands)
        rows = []
        for cached in (False, True):
            common = dict(batch_size=batch_size, crop=crop, augment=AugmentConfig(), shuffle=True, seed=seed)
            start = time.perf_counter()
            sequence = GlacierSequence(
                source.samples, stats, bands, cache_dir=tmp / "cache" if cached else None, **common
            )
            build = time.perf_counter() - start
            sequence.load(0)  # warm up: imports and per-thread augmentation pipelines are not loader speed
            for threads in sorted({1, workers}):
                times = [_epoch_seconds(sequence, threads) for _ in range(epochs)]
                served = len(sequence) * batch_size * epochs
                per_second = served / sum(wall for wall, _ in times)
                row = {
                    "config": ("cache" if cached else "no cache") + ", augment",
                    "threads": threads,
                    "tile": f"{crop}x{crop}x{len(bands)}",
                    "batch": batch_size,
                    "tiles_per_s": per_second,
                    "cpu_ms_per_tile": 1000 * sum(cpu for _, cpu in times) / served,
                    "setup_s": build,
                    "cache_dtype": str(sequence.cache.dtype) if cached else "",
                }
                if step_seconds:
                    row["x_train_step"] = per_second / (batch_size / step_seconds)
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=16, help="number of demo tiles to generate (default 16)")
    parser.add_argument("--size", type=int, default=512, help="height/width of the demo tiles (default 512)")
    parser.add_argument("--crop", type=int, default=None, help="training crop size (default: the tile size)")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per batch (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="loader threads, as in training (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo data and augmentation (default 0)")
    parser.add_argument("--work-dir", default=None, help="where to put the temporary data (default: system temp)")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="seconds per training step at --batch-size, to report loader speed as a "
                             "multiple of what training consumes")  # fmt: skip
    args = parser.parse_args(argv)
    rows = run(
        tiles=args.tiles, size=args.size, crop=args.crop, batch_size=args.batch_size, workers=args.workers,
        epochs=args.epochs, seed=args.seed, work_dir=args.work_dir, step_seconds=args.step_seconds,
    )  # fmt: skip
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
