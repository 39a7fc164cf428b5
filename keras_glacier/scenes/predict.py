"""``predict_scene``: a Landsat scene in, a georeferenced mask, probabilities and outlines out.

Steps, each refusing bad input before the slow part: check the output folder is writable, find
the scene's bands and match them to the model's (``bands.py``), open them as one grid
(``io.SceneReader``), then predict a strip of windows at a time (``tiling.py``) and write every
finished strip straight to the mask GeoTIFF (``io.StripWriter``), and finally polygonize the mask
from disk (``outlines.py``). Peak memory is set by the scene's width and the window, not its area.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_glacier.data.errors import InputError
from keras_glacier.fileio import committed_together
from keras_glacier.scenes.bands import BandMatch, match_bands
from keras_glacier.scenes.geo import require_geo
from keras_glacier.scenes.io import SceneReader, StripWriter, discover_scene
from keras_glacier.scenes.model_info import ModelInfo, model_info, nodata_value
from keras_glacier.scenes.outlines import OutlineSummary, write_outlines

DEFAULT_MIN_AREA = 0.01  # km2: the Randolph Glacier Inventory's smallest glacier
GDAL_CACHE_MB = 128  # GDAL block cache during a scene: a strip's blocks of five bands fit (benchmarks/scenes.py)
UNIT_CHECK_SPAN = 2.0  # a band whose median lies this many training ranges outside it is in other units


def _stderr(prefix: str) -> Callable[[str], None]:
    return lambda message: print(f"{prefix}{message}", file=sys.stderr)


@dataclass(frozen=True)
class SceneSummary:
    name: str
    height: int
    width: int
    windows: int
    seconds: float
    out_dir: Path
    mask_path: Path
    probability_path: Path | None
    geojson_path: Path
    gpkg_path: Path
    outlines: OutlineSummary
    class_pixels: dict  # mask value -> pixel count
    nodata_pixels: int
    min_area: float

    def line(self) -> str:
        if self.outlines.km2:
            areas = ", ".join(f"{c.name} {c.area_km2:.2f} km2 in {c.polygons} outlines" for c in self.outlines.classes)
            dropped = sum(c.dropped for c in self.outlines.classes)
            if dropped:
                areas += f" ({dropped} specks < {self.min_area:g} km2 left out)"
        else:
            areas = ", ".join(f"{c.name} {c.pixels} px in {c.polygons} outlines" for c in self.outlines.classes)
        return (f"{self.name}: {self.width}x{self.height} px, {self.windows} windows in {self.seconds:.1f} s; "
                f"{areas} -> {self.out_dir}")


def prepare_output(out: Path) -> None:
    """Create ``out`` and prove it is writable, before anything slow happens."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output folder is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{out}: cannot write to the output folder ({type(exc).__name__}: {exc.strerror or exc})") \
            from None


def check_units(strip: np.ndarray, info: ModelInfo, match: BandMatch, warn) -> bool:
    """Warn when a band's values are nowhere near the range the model was trained on (DN vs reflectance).

    Returns True once it has seen valid pixels (the check runs on the first strip that has some).
    """
    sample = strip[::4, ::4].reshape(-1, strip.shape[-1])
    sample = sample[np.isfinite(sample).all(axis=1) & (sample != 0).any(axis=1)]
    if not len(sample) or info.lo is None:
        return bool(len(sample))
    medians = np.median(sample, axis=0)
    for name, source, median, lo, hi in zip(match.names, match.sources, medians, info.lo, info.hi):
        span = max(hi - lo, 1e-12)
        if not lo - UNIT_CHECK_SPAN * span <= median <= hi + UNIT_CHECK_SPAN * span:
            warn(f"{source.label}: values (median {median:.4g}) are far outside the range the model was trained on "
                 f"for {name} ({lo:.4g}..{hi:.4g}); the scene may be in other units (raw DN vs reflectance)")
    return True


def class_mask(probability: np.ndarray, nodata: np.ndarray, info: ModelInfo, threshold: float, fill: int):
    """uint8 mask in the model's encoding (binary: class_values[1] where p > threshold), ``fill`` on no-data."""
    if probability.ndim == 2:
        if info.task != "binary":
            raise InputError(f"the model returned one probability per pixel, but it has classes "
                             f"{', '.join(info.class_names)}")
        values = np.asarray(info.class_values, np.uint8)
        mask = np.where(probability > threshold, values[1], values[0]).astype(np.uint8)
    else:
        mask = np.asarray(info.class_values, np.uint8)[np.argmax(probability, axis=-1)]
    mask[nodata] = fill
    return mask


def predict_scene(model, scene, out, **options) -> SceneSummary:
    """Predict a whole scene; write ``<name>_mask.tif``, ``<name>_outlines.geojson`` / ``.gpkg`` (and probabilities).

    ``model``: a run folder, ``.keras`` file or ``keras.Model`` (``keras_glacier.inference.load_run``),
    or a :class:`ModelInfo` together with ``forward`` (any ``solution.Forward``; tests and benchmarks).
    ``scene``: a multi-band GeoTIFF or a folder of per-band GeoTIFFs. Options: ``band_map`` {model
    band: file, scene band name, or 1-based stack band}; ``tta``, ``window``, ``overlap``,
    ``batch_size`` as for tiles; ``threshold`` (None: the model's); ``probabilities``; ``min_area``
    (km2 below which outline polygons are left out; the mask keeps every pixel); ``progress``
    (None: a bar on a terminal); ``forward``; ``warn``/``log`` (where warnings and the band table go,
    default stderr).

    GDAL's block cache is capped for the run: by default it may take 5% of the machine's memory,
    and it fills with the blocks of every strip read and written, so it, not the strips, would make
    the peak grow with the scene (benchmarks/scenes.py).
    """
    rasterio, _ = require_geo()
    # rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64: bytes, not GDAL's "small numbers are MB".
    with rasterio.Env(**({} if GDAL_CACHE_MB is None else {"GDAL_CACHEMAX": GDAL_CACHE_MB * 2**20})):
        return _predict_scene(model, scene, out, **options)


def _predict_scene(
    model,
    scene: str | os.PathLike,
    out: str | os.PathLike,
    band_map: Mapping[str, str] | None = None,
    tta: bool = True,
    window: int = 1024,
    overlap: int = 128,
    batch_size: int = 4,
    threshold: float | None = None,
    probabilities: bool = False,
    min_area: float = DEFAULT_MIN_AREA,
    progress: bool | None = None,
    forward=None,
    warn: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> SceneSummary:
    from tqdm import tqdm

    from keras_glacier.inference import check_threshold, check_tiling

    start = time.perf_counter()
    warn = warn or _stderr("warning: ")
    log = log or _stderr("")
    require_geo()
    check_tiling(window, overlap, batch_size)
    if threshold is not None:
        check_threshold(threshold)
    if min_area < 0:
        raise InputError(f"--min-area {min_area}: must be at least 0 (km2)")
    out = Path(out)
    prepare_output(out)
    found = discover_scene(scene)

    if isinstance(model, ModelInfo):
        if forward is None:
            raise ValueError("predict_scene: a ModelInfo needs its forward function")
        info = model
    else:
        from keras_glacier.inference import keras_forward, load_run

        loaded = load_run(model)
        info = model_info(loaded, warn)
        forward = forward or keras_forward(loaded.model)
    threshold = info.threshold if threshold is None else threshold

    match = match_bands(found.path, info.band_names, found.bands, band_map, found.stack)
    for note in match.notes:
        warn(note)
    log(f"bands ({info.band_source}): " + "; ".join(match.lines()))
    from keras_glacier.scenes.tiling import plan_strips, predict_strips

    with SceneReader(match) as reader:
        if reader.crs is None:
            warn(f"{found.path}: no coordinate reference system; outlines will be in pixel units"
                 f"{' (the file transform)' if not reader.transform.is_identity else ''} with areas in pixels, "
                 f"and --min-area is not applied")
        for label, scale, offset in reader.scaled:
            log(f"{label}: scaled by the file's scale {scale:g} and offset {offset:g}")
        plan = plan_strips(reader.height, reader.width, window, overlap)
        fill = nodata_value(info.class_values)
        grid = dict(width=reader.width, height=reader.height, crs=reader.crs, transform=reader.transform)
        paths = {kind: out / f"{found.name}_{kind}" for kind in
                 ("mask.tif", "probabilities.tif", "outlines.geojson", "outlines.gpkg")}
        # The outlines' polygonizer reads this 0/1 raster as its mask (outlines.write_outlines).
        foreground_path = out / f".{found.name}_foreground.tif"
        counts = np.zeros(256, np.int64)
        views = 4 if tta else 1
        bar = tqdm(total=plan.windows, desc=found.name, unit="window", file=sys.stderr,
                   disable=None if progress is None else not progress)
        seen = [0, 0]  # images through the forward, windows reported to the bar

        def counted(batch):
            result = forward(batch)
            seen[0] += len(batch)
            done = min(seen[0] // views, plan.windows)
            bar.update(done - seen[1])
            seen[1] = done
            return result

        units_checked = [False]

        def read(row, rows):
            strip = reader.read(row, rows)
            if not units_checked[0]:
                units_checked[0] = check_units(strip, info, match, warn)
            return strip

        with committed_together() as writers:
            writers.append(StripWriter(paths["mask.tif"], count=1, dtype="uint8", nodata=fill, **grid))
            writers.append(StripWriter(foreground_path, count=1, dtype="uint8", nodata=None, **grid))
            if probabilities:
                names = ["glacier"] if info.task == "binary" else list(info.class_names)
                writers.append(StripWriter(paths["probabilities.tif"], count=len(names), dtype="float32",
                                           nodata=float("nan"), descriptions=names, **grid))
            with bar:
                for _, probability, nodata in predict_strips(read, counted, plan, tta, window, overlap, batch_size):
                    mask = class_mask(probability, nodata, info, threshold, fill)
                    counts += np.bincount(mask.ravel(), minlength=256)
                    writers[0].write(mask)
                    writers[1].write(((mask != info.class_values[0]) & (mask != fill)).view(np.uint8))
                    if probabilities:
                        probability[nodata] = np.nan
                        writers[2].write(probability)
    classes = [(n, v) for n, v in zip(info.class_names, info.class_values) if v != info.class_values[0]]
    try:
        outlines = write_outlines(paths["mask.tif"], paths["outlines.geojson"], paths["outlines.gpkg"], classes,
                                  min_area if reader.crs is not None else 0.0, found.name, foreground_path)
    finally:
        foreground_path.unlink(missing_ok=True)
    return SceneSummary(
        found.name, plan.height, plan.width, plan.windows, time.perf_counter() - start, out, paths["mask.tif"],
        paths["probabilities.tif"] if probabilities else None, paths["outlines.geojson"], paths["outlines.gpkg"],
        outlines, {value: int(counts[value]) for value in info.class_values}, int(counts[fill]), min_area,
    )

