"""Per-band statistics of the training split, and the unit scale they define (README, Data formats).

``lo``/``hi`` are robust percentiles (default 1st/99th) of the raw values of valid training pixels;
the unit scale is ``u = clip((x - lo) / (hi - lo), 0, 1)``; ``mean``/``std`` are the moments of ``u``.
The model's ``BandNormalization`` layer applies exactly this, with the same floors (``hi - lo`` and
``std`` at least 1e-6) and the same treatment of non-finite inputs (they count as ``lo``), so
:func:`to_unit` here and the model agree to float rounding.

Statistics come from a bounded random sample of valid pixels (no-data pixels, i.e. NaN/inf or
all-zero, are excluded): at most ``max_tiles`` training tiles are read and at most
``max_pixels`` pixels kept in total, so a dataset of tens of thousands of slices costs the same
as a few hundred.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from keras_glacier.data.bands import check_bands, nodata_mask
from keras_glacier.data.errors import InputError
from keras_glacier.data.fileio import write_json
from keras_glacier.data.sources import Sample, read_sample

RANGE_FLOOR = 1e-6
STD_FLOOR = 1e-6
_REQUIRED = ("lo", "hi", "mean", "std")


@dataclass(frozen=True)
class BandStats:
    """One entry per selected band in every list; the metadata fields are for people, not the model."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[int, ...] | None = None
    percentiles: tuple[float, float] = (1.0, 99.0)
    num_pixels: int = 0
    band_names: tuple[str, ...] | None = None  # the dataset's names of ``bands`` (``bands.py``)

    @property
    def num_bands(self) -> int:
        return len(self.lo)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, mean, std) as float32 (C,) arrays, in the precision the model uses."""
        return tuple(np.asarray(v, dtype=np.float32) for v in (self.lo, self.hi, self.mean, self.std))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("bands", "percentiles", "band_names"):
            if data[key] is not None:
                data[key] = list(data[key])
        for key in _REQUIRED:
            data[key] = [float(v) for v in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "stats") -> BandStats:
        """Validate and convert a stats dict (e.g. a loaded ``stats.json``); ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object with lo, hi, mean, std")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise InputError(f"{source}: missing {', '.join(missing)}")
        try:
            values = {key: tuple(float(v) for v in data[key]) for key in _REQUIRED}
        except (TypeError, ValueError):
            raise InputError(f"{source}: lo, hi, mean and std must be lists of numbers") from None
        lengths = {len(v) for v in values.values()}
        if len(lengths) != 1 or 0 in lengths:
            sizes = ", ".join(f"{key} {len(v)}" for key, v in values.items())
            raise InputError(f"{source}: lo, hi, mean and std need one value per band each ({sizes})")
        if not all(math.isfinite(v) for vs in values.values() for v in vs):
            raise InputError(f"{source}: lo, hi, mean and std must be finite")
        bands = data.get("bands")
        percentiles = data.get("percentiles", (1.0, 99.0))
        return cls(
            **values,
            bands=None if bands is None else tuple(int(b) for b in bands),
            percentiles=tuple(float(p) for p in percentiles),
            num_pixels=int(data.get("num_pixels", 0)),
            band_names=None if data.get("band_names") is None else tuple(str(n) for n in data["band_names"]),
        )

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> BandStats:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise InputError(f"{path}: stats file not found") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read stats JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))


def as_band_stats(stats: BandStats | dict[str, Any]) -> BandStats:
    return stats if isinstance(stats, BandStats) else BandStats.from_dict(stats)


def to_unit(x: np.ndarray, stats: BandStats | dict[str, Any]) -> np.ndarray:
    """Raw bands (..., C) -> unit scale float32; non-finite values map to 0 like in the model."""
    lo, hi, _, _ = as_band_stats(stats).arrays()
    x = np.asarray(x, dtype=np.float32)
    u = np.subtract(x, lo)
    np.divide(u, np.maximum(hi - lo, np.float32(RANGE_FLOOR)), out=u)
    np.clip(u, 0.0, 1.0, out=u)
    np.copyto(u, 0.0, where=~np.isfinite(x))  # in place: this runs on every augmented tile
    return u


def from_unit(u: np.ndarray, stats: BandStats | dict[str, Any]) -> np.ndarray:
    """Unit scale (..., C) -> raw band values float32 (the inverse of :func:`to_unit` inside [lo, hi])."""
    lo, hi, _, _ = as_band_stats(stats).arrays()
    return (np.asarray(u, dtype=np.float32) * np.maximum(hi - lo, np.float32(RANGE_FLOOR)) + lo).astype(
        np.float32, copy=False
    )


def stats_from_pixels(
    pixels: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0), bands: Sequence[int] | None = None
) -> BandStats:
    """Statistics of valid pixels ``(N, C)`` (no-data rows must already be removed)."""
    if pixels.ndim != 2 or pixels.shape[0] == 0:
        raise InputError("no valid pixels to compute band statistics from (every pixel is NaN/inf or all-zero)")
    pixels = pixels.astype(np.float64, copy=False)
    lo, hi = np.percentile(pixels, percentiles, axis=0)
    hi = np.maximum(hi, lo + RANGE_FLOOR)
    u = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)
    return BandStats(
        lo=tuple(lo.tolist()),
        hi=tuple(hi.tolist()),
        mean=tuple(u.mean(axis=0).tolist()),
        std=tuple(np.maximum(u.std(axis=0), STD_FLOOR).tolist()),
        bands=None if bands is None else tuple(bands),
        percentiles=tuple(float(p) for p in percentiles),
        num_pixels=int(pixels.shape[0]),
    )


def compute_stats(
    samples: Sequence[Sample],
    bands: Sequence[int],
    percentiles: tuple[float, float] = (1.0, 99.0),
    max_pixels: int = 2_000_000,
    max_tiles: int = 512,
    seed: int = 0,
    band_names: Sequence[str] | None = None,
) -> BandStats:
    """Statistics of the valid pixels of ``samples`` (pass the training split only).

    Reads at most ``max_tiles`` tiles (a seeded random subset) and keeps a seeded random subset of
    each tile's valid pixels, about ``max_pixels`` in total; pixels that are NaN/inf in any band or
    0 in all bands are never counted. ``band_names`` (``DatasetSource.select_bands(...).names``)
    are recorded for people and for the band-mismatch warning of predict/evaluate.
    """
    bands = check_bands(bands)
    if band_names is not None and len(band_names) != len(bands):
        raise ValueError(f"{len(band_names)} band names for {len(bands)} bands")
    if not samples:
        raise InputError("no training tiles to compute band statistics from")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"percentiles {percentiles}: need 0 <= low < high <= 100")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(samples), size=min(max_tiles, len(samples)), replace=False).tolist())
    quota = max(1, -(-max_pixels // len(chosen)))
    kept = []
    for index in chosen:
        image, _ = read_sample(samples[index], bands)
        pixels = image[~nodata_mask(image)]
        if len(pixels) > quota:
            pixels = pixels[np.sort(rng.choice(len(pixels), size=quota, replace=False))]
        kept.append(pixels)
    stats = stats_from_pixels(np.concatenate(kept), percentiles, bands)
    return stats if band_names is None else replace(stats, band_names=tuple(band_names))
