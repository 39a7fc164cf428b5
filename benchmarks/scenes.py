"""``python -m benchmarks.scenes``: peak memory and time of whole-scene prediction as the scene grows.

Each scene is a synthetic Landsat 8 band folder (five ``LC08_..._SR_B*.TIF``/``ST_B10`` uint16 files,
tiled and compressed, with a no-data collar), written strip by strip so that making it does not
need the memory being measured. Each prediction runs in its own process, which reports its peak
resident set size (``ru_maxrss``) and its resident size after the imports, before the scene is
touched: the difference is what the scene's reading, tiling, writing and outlining cost. The fake
forward (a per-pixel function of one band) isolates that I/O and tiling cost; ``--real`` adds the
Keras network (random weights) on the smallest scene. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRODUCT = "LC08_L2SP_140041_20201030_20201106_02_T1"
FILES = ("SR_B2", "SR_B3", "SR_B4", "SR_B6", "ST_B10")
#: (height, width): "2k", a 2k-wide scene four times as tall, and "8k" (a real scene's odd size: every
#: padding path runs). Memory should follow the width (a strip), not the height.
SIZES = ((2000, 2000), (7961, 2000), (7961, 8001))
QUICK_SIZES = ((300, 500),)
COLLAR = 150


def make_scene(folder: Path, height: int, width: int, rows_per_write: int = 512) -> Path:
    """Five uint16 bands of smooth, compressible terrain-like patterns, 0 (no-data) in a collar."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint16", crs="EPSG:32645",
                   transform=Affine(30, 0, 400000, 0, -30, 3200000), nodata=0, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    x = np.arange(width)
    for band, name in enumerate(FILES):
        with rasterio.open(folder / f"{PRODUCT}_{name}.TIF", "w", **profile) as dataset:
            for row in range(0, height, rows_per_write):
                y = np.arange(row, min(row + rows_per_write, height))[:, None]
                values = 5000 + 4000 * np.sin(x / (97 + 13 * band)) * np.cos(y / 131)
                values[:, : min(COLLAR, width)] = 0
                values[:, max(width - COLLAR, 0):] = 0
                dataset.write(values.astype(np.uint16)[None], window=Window(0, row, width, len(y)))
    return folder


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="utf-8") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(scene: Path, out: Path, real: bool, window: int, tta: bool, gdal_cache_mb: int | None) -> dict:
    """One prediction in this process; returns its figures."""
    import keras_glacier  # noqa: F401  (backend first)
    from keras_glacier.scenes import predict as scene_predict
    from keras_glacier.scenes import predict_scene
    from keras_glacier.scenes.model_info import ModelInfo

    if gdal_cache_mb is not None:  # 0: GDAL's own default (5% of the memory)
        scene_predict.GDAL_CACHE_MB = gdal_cache_mb or None

    if real:
        from convert.parity import randomize_weights
        from keras_glacier.model import build_deeplab

        model = build_deeplab(5, stats={"lo": [0.0] * 5, "hi": [10000.0] * 5, "mean": [0.5] * 5, "std": [0.3] * 5})
        randomize_weights(model, seed=0)
        forward = None
    else:
        model = ModelInfo(("B1", "B2", "B3", "B5", "B6_VCID1"), "benchmark", "binary", ("background", "glacier"),
                          (0, 255), 0.5, (0.0,) * 5, (10000.0,) * 5)

        def forward(batch):
            return np.asarray(batch)[..., 0] / 10000.0

    import solution  # noqa: F401  (imported now, so the baseline includes torch like the run does)

    baseline = rss_mib()
    start = time.perf_counter()
    summary = predict_scene(model, scene, out, forward=forward, window=window, tta=tta, progress=False,
                            warn=lambda message: None, log=lambda message: None)
    return {"seconds": time.perf_counter() - start, "windows": summary.windows, "baseline_mib": baseline,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "outlines": sum(c.polygons for c in summary.outlines.classes)}


def run_child(scene: Path, out: Path, real: bool, window: int, tta: bool, gdal_cache_mb: int | None = None) -> dict:
    command = [sys.executable, "-m", "benchmarks.scenes", "--child", str(scene), str(out), "--window", str(window)]
    command += [] if gdal_cache_mb is None else ["--gdal-cache-mb", str(gdal_cache_mb)]
    command += (["--real"] if real else []) + ([] if tta else ["--no-tta"])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenes", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small scene (a smoke test of the benchmark)")
    parser.add_argument("--real", action="store_true", help="also run the Keras network on the smallest scene")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--gdal-cache-mb", type=int, default=None,
                        help="also run the largest scene with GDAL's block cache at this size instead of "
                        "predict_scene's cap (0: GDAL's own default, 5%% of the memory)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="HxW", help="scene sizes to run instead")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.real, args.window, not args.no_tta, args.gdal_cache_mb)))
        return 0
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = tuple(tuple(int(n) for n in size.lower().split("x")) for size in args.sizes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in sizes:
            scene = make_scene(Path(tmp) / f"scene_{height}x{width}", height, width)
            runs = [("fake", False, None)]
            if args.real and (height, width) == sizes[0]:
                runs.append(("keras", True, None))
            if args.gdal_cache_mb is not None and (height, width) == sizes[-1]:
                runs.append((f"fake, GDAL cache {args.gdal_cache_mb} MB", False, args.gdal_cache_mb))
            for label, real, cache in runs:
                figures = run_child(scene, Path(tmp) / f"out_{height}_{len(rows)}", real, args.window,
                                    not args.no_tta, cache)
                whole = height * width * 5 * 4 / 2**20
                rows.append((f"{width}x{height}", label, figures["windows"], f"{figures['seconds']:.1f}",
                             f"{figures['baseline_mib']:.0f}", f"{figures['peak_mib']:.0f}",
                             f"{figures['peak_mib'] - figures['baseline_mib']:.0f}", f"{whole:.0f}"))
    header = ("scene", "forward", "windows", "seconds", "RSS after imports MiB", "peak RSS MiB",
              "peak - imports MiB", "scene as float32 MiB")
    print(f"window {args.window}, TTA {'off' if args.no_tta else 'on'}, load average {os.getloadavg()[0]:.1f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
