"""Loader throughput: tiles/s of GlacierSequence with training augmentation, with and without cache.

Generates its own demo dataset (HKH layout, 15-channel float32 slices) in a temporary folder, then
times full epochs of training batches (random crop, flips/rotations, brightness/contrast, noise)
the way Keras consumes them: ``workers`` threads calling ``__getitem__`` concurrently, as Keras'
``OrderedEnqueuer`` does for ``use_multiprocessing=False``, plus a single-thread figure. Writing the
cache happens when the cached dataset is created and is reported as its setup time. Epochs of the
configurations alternate, and the table gives medians. The files sit in the OS page cache after
generation, so "no cache" measures decoding 15-channel slices and selecting bands, not disk speed.
"CPU ms/tile" (process CPU time per tile, all threads) is the figure to compare on a busy machine,
where wall-clock tiles/s depend on what else runs.

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
from benchmarks.common import load_average, markdown_table, median, timed
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
    """Time the loader; one row per (cache or not, threads), medians over ``epochs`` interleaved rounds."""
    crop = crop or size
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        scenes = max(1, tiles // 8)
        make_demo_dataset(tmp / "data", scenes=scenes, tiles_per_scene=-(-tiles // scenes), size=size, seed=seed)
        source = discover(tmp / "data")
        bands = source.default_bands
        stats = compute_stats(source.samples, bands)
        common = dict(batch_size=batch_size, crop=crop, augment=AugmentConfig(), shuffle=True, seed=seed)
        sequences, setup = {}, {}
        for name, cache_dir in (("no cache", None), ("cache", tmp / "cache")):
            setup[name], sequences[name] = timed(
                lambda cache_dir=cache_dir: GlacierSequence(source.samples, stats, bands, cache_dir=cache_dir, **common)
            )
            sequences[name].load(0)  # warm up: imports and per-thread augmentation pipelines are not loader speed
        contenders = [(name, threads) for name in sequences for threads in sorted({1, workers})]
        times: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in contenders}
        for _ in range(epochs):  # round-robin, so machine load hits every configuration alike
            for name, threads in contenders:
                times[name, threads].append(_epoch_seconds(sequences[name], threads))
        served = len(sequences["cache"]) * batch_size
        rows = []
        for name, threads in contenders:
            per_second = served / median([wall for wall, _ in times[name, threads]])
            cache = sequences[name].cache
            row = {
                "loader": f"{name}, augment",
                "threads": threads,
                "tile": f"{crop}x{crop}x{len(bands)}",
                "batch": batch_size,
                "tiles/s": per_second,
                "CPU ms/tile": 1000 * median([cpu for _, cpu in times[name, threads]]) / served,
                "setup s": setup[name],
                "cache dtype": str(cache.dtype) if cache is not None else "",
            }
            if step_seconds:
                row["x training"] = per_second / (batch_size / step_seconds)
            rows.append(row)
    return rows


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
    load = load_average()
    rows = run(
        tiles=args.tiles, size=args.size, crop=args.crop, batch_size=args.batch_size, workers=args.workers,
        epochs=args.epochs, seed=args.seed, work_dir=args.work_dir, step_seconds=args.step_seconds,
    )  # fmt: skip
    print(f"load at start: {load}, at end: {load_average()}\n")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
