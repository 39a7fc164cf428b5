"""Compact on-disk cache of the selected bands and labels of a sample list.

Reading an HKH slice means pulling 15 interleaved float32 channels off disk to keep 5; after the
first epoch that work is pure waste. The cache stores, once, the selected bands of every sample
in one flat file (read back through a memory map, so it never has to fit in memory, and windows
for random crops touch only their rows) and the uint8 labels (0/1/255, no-data and region already
applied) in another.

Storage dtype, chosen from the values actually seen:

* integers, when every value is finite and integral (e.g. uint16 digital numbers): the smallest of
  uint8, uint16, int16, int32 that holds them, so the cache is exact;
* float16, when every finite value is within float16 range (|x| <= 65504, no overflow to inf) and
  float16 rounding near each band's ``lo``/``hi`` is at most 0.1% of ``hi - lo``: an error the
  model cannot tell from sensor noise, since it sees values on that unit scale;
* float32 otherwise (exact).

The dtype is decided from the tiles read so far; if a later tile does not fit, the cache is
rewritten with the wider type (at most a few times, since the choice only ever widens). The files
are keyed by a hash of the sample list (ids, paths, file sizes and modification times, the task
and mask layout the labels were read with), the bands,
the statistics' lo/hi and a format version, are written under temporary names and renamed into
place, and the JSON metadata is written last: a cache is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import Sample, Window, read_sample
from keras_glacier.data.stats import BandStats
from keras_glacier.fileio import write_json

CACHE_VERSION = 2
#: Largest float16 rounding error accepted, as a fraction of a band's hi - lo.
FLOAT16_MAX_ERROR = 1e-3
_FLOAT16_MAX = 65504.0
_INTEGER_DTYPES = (np.uint8, np.uint16, np.int16, np.int32)


@dataclass
class ValueRange:
    """What a storage dtype must represent: are all values finite integers, and their extent."""

    finite: bool = True
    integral: bool = True
    low: float = float("inf")
    high: float = float("-inf")

    def update(self, image: np.ndarray) -> None:
        finite = np.isfinite(image)
        values = image if finite.all() else image[finite]
        self.finite = self.finite and values.size == image.size
        if values.size:
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))
            self.integral = self.integral and bool(np.all(np.floor(values) == values))


def storage_dtype(values: ValueRange, stats: BandStats) -> np.dtype:
    """The narrowest dtype that stores ``values`` exactly or within FLOAT16_MAX_ERROR (module docstring)."""
    if values.finite and values.integral:
        for dtype in _INTEGER_DTYPES:
            info = np.iinfo(dtype)
            if values.low >= info.min and values.high <= info.max:
                return np.dtype(dtype)
    lo, hi, _, _ = stats.arrays()
    magnitude = max(abs(values.low), abs(values.high)) if values.high >= values.low else 0.0
    rounding = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64) * 2.0**-11
    if magnitude <= _FLOAT16_MAX and np.all(rounding <= FLOAT16_MAX_ERROR * (hi.astype(np.float64) - lo)):
        return np.dtype(np.float16)
    return np.dtype(np.float32)


def cache_key(samples: Sequence[Sample], bands: Sequence[int], stats: BandStats) -> str:
    """Hash of everything the cached bytes depend on (a changed file changes its size or mtime)."""
    files = []
    for sample in samples:
        for path in (*sample.image_paths, sample.label_path):
            if path is None:
                files.append(None)
                continue
            info = os.stat(path)
            files.append([path, info.st_size, info.st_mtime_ns])
    payload = {
        "version": CACHE_VERSION,
        "bands": [int(b) for b in bands],
        "lo": [float(v) for v in stats.lo],
        "hi": [float(v) for v in stats.hi],
        "ids": [sample.sample_id for sample in samples],
        "files": files,
        "labels": [[sample.task, sample.mask_layout] for sample in samples],  # how the labels were read
    }
    return hashlib.sha256(json.dumps(payload).encode("utf-8")).hexdigest()


class TileCache:
    """Read side of the cache: ``read(index, window)`` mirrors ``sources.read_sample``."""

    def __init__(self, meta_path: str | os.PathLike) -> None:
        meta_path = Path(meta_path)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.meta_path = meta_path
        self.key = meta["key"]
        self.dtype = np.dtype(meta["dtype"])
        self.channels = int(meta["channels"])
        self.shapes = [tuple(shape) for shape in meta["shapes"]]
        pixels = np.array([h * w for h, w in self.shapes], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(pixels)])
        total = int(self._offsets[-1])
        images, labels = meta_path.with_suffix(".images"), meta_path.with_suffix(".labels")
        self._images = np.memmap(images, dtype=self.dtype, mode="r", shape=(total * self.channels,))
        self._labels = np.memmap(labels, dtype=np.uint8, mode="r", shape=(total,))

    def __len__(self) -> int:
        return len(self.shapes)

    def read(self, index: int, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.shapes[index]
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        image = self._images[start * self.channels : stop * self.channels].reshape(height, width, self.channels)
        label = self._labels[start:stop].reshape(height, width)
        if window is not None:
            top, left, h, w = window
            image, label = image[top : top + h, left : left + w], label[top : top + h, left : left + w]
        return image.astype(np.float32), np.array(label)

    @classmethod
    def open_or_build(
        cls, cache_dir: str | os.PathLike, samples: Sequence[Sample], bands: Sequence[int], stats: BandStats
    ) -> TileCache:
        """The cache of (samples, bands, stats) in ``cache_dir``, written first if it is not there."""
        key = cache_key(samples, bands, stats)
        meta_path = Path(cache_dir) / f"tiles-{key[:24]}.json"
        if meta_path.exists():
            try:
                cache = cls(meta_path)
                if cache.key == key and len(cache) == len(samples):
                    return cache
            except (OSError, ValueError, KeyError):
                pass  # damaged or from another version: rebuild below
        _build(meta_path, key, samples, bands, stats)
        return cls(meta_path)


class _Widen(Exception):
    """A tile needs a wider storage dtype than the one being written."""

    def __init__(self, dtype: np.dtype) -> None:
        super().__init__(dtype.name)
        self.dtype = dtype


def _write(
    images_path: str, labels_path: str, samples: Sequence[Sample], bands: Sequence[int], stats: BandStats,
    values: ValueRange, dtype: np.dtype | None,
) -> tuple[np.dtype, list[list[int]]]:
    shapes = []
    with open(images_path, "wb") as images, open(labels_path, "wb") as labels:
        for sample in samples:
            image, label = read_sample(sample, bands)
            values.update(image)
            needed = storage_dtype(values, stats)
            if dtype is None:
                dtype = needed
            elif needed != dtype:
                raise _Widen(needed)
            images.write(image.astype(dtype).tobytes())
            labels.write(np.ascontiguousarray(label, dtype=np.uint8).tobytes())
            shapes.append(list(image.shape[:2]))
    return dtype, shapes


def _build(meta_path: Path, key: str, samples: Sequence[Sample], bands: Sequence[int], stats: BandStats) -> None:
    if any(sample.label_path is None for sample in samples):
        missing = next(sample for sample in samples if sample.label_path is None)
        raise InputError(f"{missing.image_paths[0]}: no label file; the cache is for labelled training data")
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a stale description must not outlive the data it describes
    finals = (meta_path.with_suffix(".images"), meta_path.with_suffix(".labels"))
    temporaries = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            temporaries.append(tmp)
        values, dtype = ValueRange(), None
        while True:
            try:
                dtype, shapes = _write(*temporaries, samples, bands, stats, values, dtype)
                break
            except _Widen as widen:
                dtype = widen.dtype
        for tmp, final in zip(temporaries, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temporaries:
            Path(tmp).unlink(missing_ok=True)
    write_json(
        meta_path,
        {
            "version": CACHE_VERSION,
            "key": key,
            "dtype": dtype.name,
            "channels": len(bands),
            "bands": [int(b) for b in bands],
            "ids": [sample.sample_id for sample in samples],
            "shapes": shapes,
        },
    )
