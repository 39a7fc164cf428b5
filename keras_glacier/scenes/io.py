"""Reading a scene and writing rasters, a strip of rows at a time, through rasterio.

Nothing here holds a whole band: :class:`SceneReader` reads the rows it is asked for (with the
file's scale/offset applied and its no-data pixels as NaN) and :class:`StripWriter` writes rows as
they are finished, in whole blocks of the tiled output, so peak memory follows the scene's width,
never its area.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_glacier.data.errors import InputError
from keras_glacier.scenes.bands import BandMatch, SceneBand, scene_band_key, sensor_numbering
from keras_glacier.scenes.geo import require_geo

TIFF_SUFFIXES = (".tif", ".tiff")
BLOCK = 256  # tile size of the written GeoTIFFs (GDAL's usual; a multiple of 16 as GeoTIFF requires)


@dataclass(frozen=True)
class Scene:
    """A scene's location, its name for output files, and the bands it offers."""

    path: Path
    name: str
    stack: bool  # one multi-band file rather than a folder of per-band files
    bands: tuple[SceneBand, ...]


@contextlib.contextmanager
def quiet_georeferencing():
    """rasterio warns when a file has no georeferencing; predict_scene says so once, in its own words."""
    rasterio, _ = require_geo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def _open(path: Path):
    rasterio, _ = require_geo()
    try:
        with quiet_georeferencing():
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: cannot read as a raster ({' '.join(str(exc).split())[:200]})") from None


def _product_name(names: list[str]) -> str | None:
    """``LC08_L2SP_140041_20201030_20201106_02_T1`` from its band files, when they share it."""
    prefixes = {"_".join(Path(name).stem.split("_")[:7]) for name in names if sensor_numbering(name)}
    return prefixes.pop() if len(prefixes) == 1 else None


def discover_scene(path: str | os.PathLike) -> Scene:
    """A folder of per-band GeoTIFFs or one multi-band GeoTIFF; bands named by file names or band descriptions."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no GeoTIFF files (*.tif) in this scene folder")
        bands = tuple(SceneBand(p, 1, scene_band_key(p.stem), p.name, sensor_numbering(p.name)) for p in files)
        return Scene(path, _product_name([p.name for p in files]) or path.name, False, bands)
    if not path.is_file():
        raise InputError(f"{path}: scene not found (give a multi-band GeoTIFF or a folder of band GeoTIFFs)")
    with _open(path) as dataset:
        descriptions = dataset.descriptions
    numbering = sensor_numbering(path.name)
    bands = tuple(
        SceneBand(path, index, scene_band_key(text) if text else None,
                  f"band {index}" + (f" ({text!r})" if text else ""), numbering)
        for index, text in enumerate(descriptions, start=1)
    )
    return Scene(path, path.stem, True, bands)


class SceneReader:
    """The matched bands as float32 rows (rows, width, bands): scaled, no-data as NaN.

    All files must share one grid (size, transform, CRS), or the bands would not be the same pixels.
    Scale and offset are the file's own (GDAL metadata; 1 and 0 when absent); a pixel is no-data in
    every band when any band's mask says so (the GDAL no-data tag, an internal mask or alpha band).
    Pixels with all bands 0 are no-data too, by the project's rule, applied downstream.
    """

    def __init__(self, match: BandMatch):
        self.match = match
        self._datasets: dict[Path, object] = {}
        self._bands = []
        try:
            for source in match.sources:
                if source.path not in self._datasets:
                    self._datasets[source.path] = _open(source.path)
            self._check_grid()
            for source in match.sources:
                dataset = self._datasets[source.path]
                if not 1 <= source.index <= dataset.count:
                    raise InputError(f"{source.path}: has {dataset.count} bands, no band {source.index}")
                i = source.index - 1
                scale, offset = dataset.scales[i], dataset.offsets[i]
                masked = [flag.name for flag in dataset.mask_flag_enums[i]] != ["all_valid"]
                self._bands.append((dataset, source.index, float(scale), float(offset), masked))
        except BaseException:
            self.close()
            raise
        first = self._datasets[match.sources[0].path]
        self.height, self.width = first.height, first.width
        self.crs, self.transform = first.crs, first.transform
        self.scaled = [(s.label, scale, offset) for s, (_, _, scale, offset, _) in zip(match.sources, self._bands)
                       if (scale, offset) != (1.0, 0.0)]

    def _check_grid(self) -> None:
        items = list(self._datasets.items())
        first_path, first = items[0]
        for path, dataset in items[1:]:
            if (dataset.height, dataset.width) != (first.height, first.width):
                raise InputError(f"{path}: size {dataset.width}x{dataset.height} differs from {first_path.name} "
                                 f"({first.width}x{first.height}); all bands must share one grid")
            if not dataset.transform.almost_equals(first.transform) or dataset.crs != first.crs:
                raise InputError(f"{path}: georeferencing (CRS or transform) differs from {first_path.name}; "
                                 f"all bands must share one grid")

    def read(self, row: int, rows: int) -> np.ndarray:
        """Rows ``row .. row + rows`` of every band, float32 (rows, width, bands)."""
        rasterio, _ = require_geo()
        window = rasterio.windows.Window(0, row, self.width, rows)
        out = np.empty((rows, self.width, len(self._bands)), np.float32)
        invalid = None
        for channel, (dataset, index, scale, offset, masked) in enumerate(self._bands):
            values = dataset.read(index, window=window, out_dtype=np.float32)
            if (scale, offset) != (1.0, 0.0):
                values = values * np.float32(scale) + np.float32(offset)
            out[..., channel] = values
            if masked:
                band_invalid = dataset.read_masks(index, window=window) == 0
                invalid = band_invalid if invalid is None else invalid | band_invalid
        if invalid is not None:
            out[invalid] = np.nan
        return out

    def close(self) -> None:
        for dataset in self._datasets.values():
            dataset.close()
        self._datasets = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StripWriter:
    """A tiled, compressed GeoTIFF written top to bottom in row strips, under a temporary name until done.

    Rows are buffered until a whole row of blocks is complete, so GDAL never compresses a block
    twice; the file appears under its final name only when every row is written (:meth:`commit`).
    """

    def __init__(self, path: Path, *, width: int, height: int, count: int, dtype: str, crs, transform, nodata,
                 descriptions=None):
        rasterio, _ = require_geo()
        self.path, self.height, self.count = Path(path), height, count
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        predictor = 3 if np.dtype(dtype).kind == "f" else 2
        profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                       transform=transform, nodata=nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                       compress="deflate", predictor=predictor, BIGTIFF="IF_SAFER")
        with quiet_georeferencing():
            self._dataset = rasterio.open(self.tmp, "w", **profile)
        for index, text in enumerate(descriptions or [], start=1):
            self._dataset.set_band_description(index, text)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._row = 0  # first row not yet written to the file

    def write(self, rows: np.ndarray) -> None:
        """Append (rows, width) or (rows, width, count) values below those written so far."""
        rows = rows[..., None] if rows.ndim == 2 else rows
        self._pending.append(rows)
        self._pending_rows += len(rows)
        done = self._row + self._pending_rows
        flush = done if done == self.height else (done // BLOCK) * BLOCK
        if flush > self._row:
            self._flush(flush - self._row)

    def _flush(self, count: int) -> None:
        rasterio, _ = require_geo()
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = block[:count], block[count:]
        window = rasterio.windows.Window(0, self._row, head.shape[1], count)
        self._dataset.write(np.moveaxis(head, -1, 0), window=window)
        self._row += count
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def commit(self) -> Path:
        if self._row + self._pending_rows != self.height:
            raise RuntimeError(f"{self.path}: {self._row + self._pending_rows} of {self.height} rows written")
        self._dataset.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._dataset.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def pixel_area(transform) -> float:
    """Area of one pixel in the CRS's units squared (the transform's determinant)."""
    return abs(transform.a * transform.e - transform.b * transform.d)


def ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
