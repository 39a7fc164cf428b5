"""Prediction speed and memory: solution.py's batched tiling (with and without flip TTA) vs a naive loop,
and the Keras model through the same driver.

Every contender turns the same raw (H, W, 5) tiles into probability maps:

* ``torch batched``: ``solution.predict_tiles`` with ``solution.torch_forward`` (the submission's path),
  at most ``batch_size`` images per forward pass, each flipped view counting as one (default 16: the
  four views of four tiles in one pass);
* ``torch submission default``: the same with ``solution.default_batch_size`` images per pass, what
  ``maskgeration`` uses on this device (one on a CPU);
* ``torch naive``: one tile and one view per forward pass (what a straightforward loop does);
* ``keras predict default``: ``solution.predict_tiles`` fed with ``keras_glacier.inference.keras_forward``
  (the jit-compiled forward that ``keras_glacier.predict`` uses), with that command's default images
  per pass. Its first call per batch shape compiles; that is reported as ``compile_s`` and not timed.

The Keras and torch models share their weights when ``convert`` is importable (the table then shows
the largest probability difference between them); otherwise they are two random initialisations.
Contenders alternate round by round in one process.

Memory: PyTorch on CPU has no peak-memory counter, so two figures are taken in an extra untimed
pass per contender: ``rss_peak_mb``, the peak resident set size sampled every 2 ms minus the RSS
before the pass (all allocations: torch/XLA buffers, numpy arrays), and ``numpy_peak_mb``, the
tracemalloc peak (numpy arrays of the tiling driver only; torch and XLA allocate outside it).

    python -m benchmarks.inference                 # 4 tiles of 512x512
    python -m benchmarks.inference --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from benchmarks.common import interleaved, load_average, markdown_table, median, spread, timed
from benchmarks.train_step import NUM_BANDS, STATS
from keras_glacier.predict import DEFAULT_BATCH_SIZE as PREDICT_BATCH_SIZE

DEFAULT_SIZE = 512
DEFAULT_TILES = 4
DEFAULT_BATCH = 16
KERAS = "keras predict default"
MEMORY_MODES = ("subprocess", "sampled", "off")


def make_tiles(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Raw band tiles with a NaN stripe (no-data) in each, as real tiles have."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array(STATS["lo"], np.float32), np.array(STATS["hi"], np.float32)
    tiles = []
    for _ in range(count):
        tile = (lo + rng.random((size, size, NUM_BANDS), dtype=np.float32) * (hi - lo)).astype(np.float32)
        tile[: size // 16] = np.nan
        tiles.append(tile)
    return tiles


def build_models():
    """The Keras model and its PyTorch twin (same weights when ``convert`` is available), eval mode."""
    import torch

    import solution
    from keras_glacier.model import build_deeplab

    keras_model = build_deeplab(num_bands=NUM_BANDS, stats=STATS)
    torch_model = solution.AttentionDeepLabV3Plus(in_channels=NUM_BANDS)
    try:
        from convert.name_map import keras_to_torch_state_dict
    except ImportError:
        shared = False
        with torch.no_grad():
            for name in ("lo", "hi", "mean", "std"):
                getattr(torch_model.normalize, name).copy_(torch.tensor(STATS[name]))
    else:
        converted = keras_to_torch_state_dict(keras_model)
        state = {key: torch.from_numpy(np.asarray(value)) for key, value in converted.items()}
        torch_model.load_state_dict(state, strict=False)
        shared = True
    return keras_model, torch_model.eval(), shared


def naive_predict(forward, tiles: list[np.ndarray], tta: bool) -> list[np.ndarray]:
    """One tile, one view per forward pass; flips undone and averaged like ``solution.predict_tiles``."""
    import solution

    results = []
    for tile in tiles:
        views = [(slice(None), slice(None))]
        if tta:
            views += [(slice(None), slice(None, None, -1)), (slice(None, None, -1), slice(None)),
                      (slice(None, None, -1), slice(None, None, -1))]  # fmt: skip
        total = np.zeros(tile.shape[:2], np.float32)
        for rows, cols in views:
            view = np.ascontiguousarray(tile[rows, cols][None])
            total += np.asarray(forward(view))[0].reshape(tile.shape[:2])[rows, cols]
        prob = total / len(views)
        prob[solution.nodata_mask(tile)] = 0.0
        results.append(prob)
    return results


class RssSampler:
    """Peak resident set size of this process while the context is open, sampled from /proc."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                return int(handle.read().split()[1]) * self._page
        except OSError:  # not Linux: the lifetime peak is all there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure_memory(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak RSS increase MiB, tracemalloc peak MiB) of one call."""
    tracemalloc.start()
    try:
        with RssSampler() as rss:
            fn()
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return rss.increase_mb, numpy_peak / 2**20


def make_contenders(images, size: int, batch_size: int, tta: bool, naive: bool = True):
    """name -> callable predicting all ``images``; name -> images per forward pass; whether Keras and
    torch share weights."""
    import solution
    from keras_glacier.inference import keras_forward

    keras_model, torch_model, shared = build_models()
    torch_fwd = solution.torch_forward(torch_model)

    def batched(forward, images_per_pass):
        return lambda: solution.predict_tiles(
            forward, images, tta=tta, window=size, overlap=0, batch_size=images_per_pass
        )

    per_pass = {"torch batched": batch_size, "torch submission default": solution.default_batch_size()}
    contenders = {name: batched(torch_fwd, images_per_pass) for name, images_per_pass in per_pass.items()}
    if naive:
        contenders["torch naive (1 view/pass)"] = lambda: naive_predict(torch_fwd, images, tta)
        per_pass["torch naive (1 view/pass)"] = 1
    contenders[KERAS] = batched(keras_forward(keras_model), PREDICT_BATCH_SIZE)
    per_pass[KERAS] = PREDICT_BATCH_SIZE
    return contenders, per_pass, shared


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: restart the VmHWM (peak RSS) counter from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def probe_memory(name: str, size: int, tiles: int, batch_size: int, tta: bool, seed: int = 0) -> dict:
    """Peak RSS of one first call of contender ``name`` in this (fresh) process, above the RSS before it.

    The peak counter is reset just before the call, so building the models does not count.
    """
    images = make_tiles(tiles, size, seed)
    contenders, _, _ = make_contenders(images, size, batch_size, tta)
    if not _reset_peak_rss():
        raise OSError("cannot reset the peak RSS counter (/proc/self/clear_refs); use --memory sampled")
    before = _status_mb("VmRSS")
    tracemalloc.start()
    contenders[name]()
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_peak_mb": max(_status_mb("VmHWM") - before, 0.0), "numpy_peak_mb": numpy_peak / 2**20}


def _probe_in_subprocess(name: str, size: int, tiles: int, batch_size: int, tta: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.inference", "--probe", name, "--size", str(size),
               "--tiles", str(tiles), "--batch-size", str(batch_size)] + (["--probe-tta"] if tta else [])  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {name!r} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    size: int = DEFAULT_SIZE,
    tiles: int = DEFAULT_TILES,
    batch_size: int = DEFAULT_BATCH,
    rounds: int = 3,
    tta_modes=(False, True),
    naive: bool = True,
    memory: str = "subprocess",
    seed: int = 0,
) -> list[dict]:
    """One row per (contender, TTA): median seconds for all tiles, tiles/s, memory, ratio to torch batched.

    ``memory="subprocess"`` measures each contender's peak RSS in a fresh process (see NOTES);
    ``"sampled"`` samples this process's RSS during one extra call (quick, but the allocators'
    retained memory hides most of it after the first contender); ``"off"`` skips memory.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    images = make_tiles(tiles, size, seed)
    rows = []
    for tta in tta_modes:
        load_before = load_average()
        contenders, per_pass, shared = make_contenders(images, size, batch_size, tta, naive)
        compile_s, keras_maps = timed(contenders[KERAS])  # first call per shape compiles
        torch_maps = contenders["torch batched"]()
        max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(keras_maps, torch_maps))
        samples = interleaved(contenders, rounds=rounds, warmup=0)
        reference = median(samples["torch batched"])
        load_after = load_average()
        for name, times in samples.items():
            seconds = median(times)
            row = {
                "contender": name,
                "tta": "4 flips" if tta else "off",
                "tiles": f"{tiles}x{size}x{size}",
                "images_per_pass": per_pass[name],
                "seconds": seconds,
                "tiles_per_s": tiles / seconds,
                "vs_torch_batched": seconds / reference,
                "noise": spread(times),
            }
            if memory == "subprocess":
                row.update(_probe_in_subprocess(name, size, tiles, batch_size, tta))
            elif memory == "sampled":
                row["rss_peak_mb"], row["numpy_peak_mb"] = measure_memory(contenders[name])
            row["compile_s"] = compile_s if name == KERAS else None
            row["max_prob_diff_keras_torch"] = (max_diff if shared else None) if name == KERAS else None
            row["load"] = f"{load_before} -> {load_after}"
            rows.append(row)
        del contenders
    return rows


NOTES = (
    "seconds: median wall time to predict all tiles (pad, views, forward passes, flips undone, blend, no-data "
    "zeroed); vs_torch_batched: seconds / the torch batched row (below 1 = faster). Memory (torch on CPU has no "
    "peak counter): rss_peak_mb is the peak resident set size of a fresh process running the contender once, "
    "above its RSS just before the call (models built, nothing run; for Keras it includes the XLA compilation); "
    "with --memory sampled (the --quick default) it is sampled every 2 ms during one more call in this process, "
    "which the allocators' retained memory understates. numpy_peak_mb: tracemalloc peak of that call (numpy "
    "arrays only: the tiling driver's buffers). "
    "compile_s: the first Keras call (jit compile + one run). max_prob_diff_keras_torch: largest |probability "
    "difference| of the two models with shared converted weights."
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="tile height and width (default 512; --quick 64)")
    parser.add_argument("--tiles", type=int, default=None, help="number of tiles (default 4; --quick 2)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"images per forward pass for the batched contenders, each TTA flip counting as one "
        f"(default {DEFAULT_BATCH})",
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default 3; --quick 1)")
    parser.add_argument("--no-naive", action="store_true", help="skip the one-view-per-pass loop")
    parser.add_argument("--memory", choices=MEMORY_MODES, default=None,
                        help="how to measure peak memory (default subprocess; --quick: sampled)")  # fmt: skip
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory probe
    parser.add_argument("--probe-tta", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny tiles and one round (a smoke run)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_memory(args.probe, args.size or DEFAULT_SIZE, args.tiles or DEFAULT_TILES,
                                      args.batch_size, args.probe_tta)))  # fmt: skip
        return []
    size = args.size or (64 if args.quick else DEFAULT_SIZE)
    if size % 16:
        parser.error("--size must be a multiple of 16")
    rows = run(size=size, tiles=args.tiles or (2 if args.quick else DEFAULT_TILES), batch_size=args.batch_size,
               rounds=args.rounds or (1 if args.quick else 3), naive=not args.no_naive,
               memory=args.memory or ("sampled" if args.quick else "subprocess"))  # fmt: skip
    print(markdown_table(rows))
    print()
    print(NOTES)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
