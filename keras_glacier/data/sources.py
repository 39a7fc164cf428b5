"""Find the samples of a dataset folder, pair their files, and read them.

Two layouts are understood (see :func:`discover`):

* **HKH slices**: ``slice_<i>_image_<j>.npy`` (H, W, 15) with ``slice_<i>_mask_<j>.npy`` (H, W, 3),
  paired by their ``(i, j)`` ids (never by sort order). Slices are read through memory maps and
  only the selected channels (and only the requested window) are copied out, so a dataset of tens
  of thousands of slices never has to fit in memory. Scene id: ``slice_<i>``.
* **Band folders** (GlacierHack): ``Band1..BandN/<tile>.tif`` and optionally ``label/<tile>.tif``
  (also ``labels``, ``mask`` or ``masks``), labels 0/1 or 0/255. Finding, ordering and matching the
  files is ``solution.py``'s job (one copy of those rules, shared with inference); it is imported
  lazily because it imports torch. Band selection indexes the band folders in band-number order.
  Scene id: the tile id without its last numeric component when it has at least two (``02_07`` ->
  ``02``: tiles cut from one scene share the prefix), otherwise the tile id itself.

Every problem with the user's files raises :class:`~keras_glacier.data.errors.InputError` naming
the file; ``solution.InputError`` from the shared helpers is re-raised as that type.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_glacier.constants import DEFAULT_BANDS
from keras_glacier.data.bands import binary_label, check_bands, compress_hkh_mask, ignore_nodata, select_bands
from keras_glacier.data.errors import InputError

NPY = "npy"
TIFF = "tiff"
LABEL_FOLDER_NAMES = ("label", "labels", "mask", "masks")

_SLICE_RE = re.compile(r"^slice_(\d+)_(image|mask)_(\d+)\.npy$")
_ID_SEPARATORS = re.compile(r"[_\-.\s]+")

#: (top, left, height, width) of the part of a tile to read.
Window = tuple[int, int, int, int]
#: A window, or a function choosing one from the tile's (height, width) once the reader knows it.
WindowSpec = Window | Callable[[tuple[int, int]], Window] | None


@dataclass(frozen=True)
class Sample:
    """One image tile and its label file; plain strings so it pickles and goes into JSON splits."""

    sample_id: str  # unique within a dataset: the image file stem (npy) or the tile id (TIFF)
    scene_id: str  # tiles sharing a scene id never end up on both sides of a split
    kind: str  # NPY or TIFF
    image_paths: tuple[str, ...]  # npy: (image,); TIFF: one file per band folder, Band1 first
    label_path: str | None
    name: str  # file name of the tile (the Band1 file for TIFF): predictions are written under it


@dataclass(frozen=True)
class DatasetSource:
    """What :func:`discover` found: the layout, the samples and the band folders (TIFF only)."""

    kind: str
    root: Path
    samples: tuple[Sample, ...]
    band_names: tuple[str, ...] = ()

    @property
    def has_labels(self) -> bool:
        return all(sample.label_path is not None for sample in self.samples)

    @property
    def default_bands(self) -> tuple[int, ...]:
        """DEFAULT_BANDS for HKH slices; every band folder, in order, for TIFF folders."""
        return tuple(range(len(self.band_names))) if self.kind == TIFF else tuple(DEFAULT_BANDS)

    def resolve_bands(self, bands: Sequence[int] | None = None) -> tuple[int, ...]:
        """The bands to read: ``bands`` checked against this dataset, or the default."""
        if bands is None:
            return self.default_bands
        bands = check_bands(bands)
        if self.kind == TIFF and max(bands) >= len(self.band_names):
            raise InputError(
                f"{self.root}: bands {list(bands)} index the {len(self.band_names)} band folders "
                f"({', '.join(self.band_names)}), so they must be below {len(self.band_names)}"
            )
        return bands


def _solution():
    """``solution.py`` (repo root), imported on first use: it imports torch, which npy users never need."""
    import solution

    return solution


def _shared(function_name: str, *args):
    """Call a helper of ``solution.py``, re-raising its InputError as ours (one type for callers)."""
    solution = _solution()
    try:
        return getattr(solution, function_name)(*args)
    except solution.InputError as exc:
        raise InputError(str(exc)) from exc


def tile_scene_id(tile_id: str) -> str:
    """``02_07`` -> ``02``; ``001`` -> ``001``; ``a_b`` -> ``a_b`` (see the module docstring)."""
    parts = [part for part in _ID_SEPARATORS.split(tile_id) if part]
    if len(parts) >= 2 and parts[-1].isdigit():
        return "_".join(parts[:-1])
    return tile_id


def discover(root: str | os.PathLike) -> DatasetSource:
    """Detect the layout of ``root`` and list its samples, with every pairing problem as an InputError.

    HKH slices win when a folder holds both layouts (band folders are then ignored).
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (pass the folder holding the slices or band folders)")
    entries = sorted(os.listdir(root))
    if not entries:
        raise InputError(f"{root}: dataset folder is empty")
    if any(_SLICE_RE.match(name) for name in entries):
        return _discover_npy(root, entries)
    subfolders = [name for name in entries if (root / name).is_dir()]
    if subfolders and any(_solution().band_number(name) is not None for name in subfolders):
        return _discover_band_folders(root, entries)
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise InputError(
        f"{root}: no slice_<i>_image_<j>.npy files and no Band1..BandN folders (found {shown})"
    )


def _discover_npy(root: Path, entries: list[str]) -> DatasetSource:
    files: dict[str, dict[tuple[int, int], str]] = {"image": {}, "mask": {}}
    for name in entries:
        match = _SLICE_RE.match(name)
        if not match:
            continue
        key = (int(match.group(1)), int(match.group(3)))
        kind = match.group(2)
        if key in files[kind]:
            raise InputError(f"{root / name}: same slice id as {files[kind][key]} (slice {key[0]}, tile {key[1]})")
        files[kind][key] = name
    images, masks = files["image"], files["mask"]
    for key, name in images.items():
        if key not in masks:
            raise InputError(f"{root / name}: no mask file slice_{key[0]}_mask_{key[1]}.npy for this image")
    for key, name in masks.items():
        if key not in images:
            raise InputError(f"{root / name}: no image file slice_{key[0]}_image_{key[1]}.npy for this mask")
    samples = tuple(
        Sample(
            sample_id=Path(images[key]).stem,
            scene_id=f"slice_{key[0]}",
            kind=NPY,
            image_paths=(str(root / images[key]),),
            label_path=str(root / masks[key]),
            name=images[key],
        )
        for key in sorted(images)
    )
    return DatasetSource(NPY, root, samples)


def _discover_band_folders(root: Path, entries: list[str]) -> DatasetSource:
    band_dirs = _shared("resolve_band_dirs", root)
    label_dirs = [name for name in entries if name.lower() in LABEL_FOLDER_NAMES and (root / name).is_dir()]
    if len(label_dirs) > 1:
        raise InputError(f"{root}: several label folders ({', '.join(label_dirs)}); keep one")
    label_dir = str(root / label_dirs[0]) if label_dirs else None
    tiles = _shared("match_tiles", band_dirs, label_dir)
    samples = tuple(
        Sample(
            sample_id=tile.tile_id,
            scene_id=tile_scene_id(tile.tile_id),
            kind=TIFF,
            image_paths=tuple(tile.band_paths),
            label_path=tile.label_path,
            name=tile.name,
        )
        for tile in tiles
    )
    return DatasetSource(TIFF, root, samples, tuple(name for name, _ in band_dirs))


#: Serialises the fallback path of ``_load_npy`` (np.load parses headers with ``ast``; see below).
_NPY_OPEN_LOCK = threading.Lock()
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_FIELDS = re.compile(
    r"""^\{\s*'descr':\s*'(?P<descr>[^']+)',\s*'fortran_order':\s*(?P<fortran>True|False),"""
    r"""\s*'shape':\s*\((?P<shape>[\d,\s]*)\),?\s*\}\s*$"""
)


def _npy_layout(path: str):
    """(dtype, shape, Fortran order, data offset) of a plain .npy file, or None for anything unusual.

    numpy parses the header (a dict literal) with ``ast.literal_eval``, and CPython before 3.11.8 /
    3.12.1 (gh-106905) can then fail with "SystemError: AST constructor recursion depth mismatch"
    when another thread compiles code at the same moment (an import, a dataclass), which the
    loader's worker threads and the training thread do. Plain headers are read here without ``ast``.
    """
    with open(path, "rb") as handle:
        start = handle.read(10)
        if len(start) < 10 or start[:6] != _NPY_MAGIC:
            return None
        major = start[6]
        if major == 1:
            length, offset = int.from_bytes(start[8:10], "little"), 10
        elif major in (2, 3):
            start += handle.read(2)
            length, offset = int.from_bytes(start[8:12], "little"), 12
        else:
            return None
        header = handle.read(length).decode("utf-8" if major == 3 else "latin1", errors="replace")
    match = _HEADER_FIELDS.match(header.strip())
    if match is None:
        return None
    try:
        dtype = np.dtype(match["descr"])
        shape = tuple(int(part) for part in match["shape"].split(",") if part.strip())
    except (TypeError, ValueError):
        return None
    if dtype.hasobject or not shape:
        return None
    return dtype, shape, match["fortran"] == "True", offset + length


def _load_npy(path: str) -> np.ndarray:
    """The array of a .npy file, memory-mapped read-only, safe to call from several threads."""
    try:
        layout = _npy_layout(path)
        if layout is not None:
            dtype, shape, fortran, offset = layout
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        with _NPY_OPEN_LOCK:
            return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read .npy file ({type(exc).__name__}: {exc})") from exc


def _window(spec: WindowSpec, shape: tuple[int, int]) -> tuple[slice, slice]:
    if spec is None:
        return slice(None), slice(None)
    top, left, height, width = spec(shape) if callable(spec) else spec
    if top < 0 or left < 0 or top + height > shape[0] or left + width > shape[1]:
        raise ValueError(f"window {(top, left, height, width)} outside a tile of size {shape}")
    return slice(top, top + height), slice(left, left + width)


def read_sample(
    sample: Sample, bands: Sequence[int], window: WindowSpec = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image float32 (h, w, C) raw band values, label uint8 (h, w) 0/1/255 or None without labels).

    Label 255 marks pixels outside the HKH region and no-data pixels (see ``bands.nodata_mask``).
    ``window`` restricts reading to part of the tile (for random crops); it may be a function of
    the tile's full size, which the reader learns first. A tile whose selected bands are NaN/inf
    everywhere is an error (checked on whole-tile reads).
    """
    bands = check_bands(bands)
    if sample.kind == NPY:
        image, label = _read_npy(sample, bands, window)
    elif sample.kind == TIFF:
        image, label = _read_tiff(sample, bands, window)
    else:
        raise ValueError(f"unknown sample kind {sample.kind!r}")
    if window is None and not np.isfinite(image).any():
        raise InputError(f"{sample.image_paths[0]}: every pixel is NaN/inf in bands {list(bands)}")
    if label is not None:
        ignore_nodata(label, image)
    return image, label


def _read_npy(sample: Sample, bands: tuple[int, ...], window: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    path = sample.image_paths[0]
    array = _load_npy(path)
    if array.ndim != 3:
        raise InputError(f"{path}: expected an (H, W, channels) image, got shape {tuple(array.shape)}")
    if max(bands) >= array.shape[-1]:
        raise InputError(
            f"{path}: has {array.shape[-1]} channels, but bands {list(bands)} need at least {max(bands) + 1}"
        )
    rows, cols = _window(window, array.shape[:2])
    image = select_bands(array[rows, cols], bands)
    mask = _load_npy(sample.label_path)
    if mask.ndim != 3 or mask.shape[-1] != 3:
        raise InputError(f"{sample.label_path}: expected an (H, W, 3) mask, got shape {tuple(mask.shape)}")
    if mask.shape[:2] != array.shape[:2]:
        raise InputError(
            f"{sample.label_path}: mask size {mask.shape[:2]} differs from image {path} size {array.shape[:2]}"
        )
    return image, compress_hkh_mask(np.asarray(mask[rows, cols]), source=sample.label_path)


def _read_tiff(
    sample: Sample, bands: tuple[int, ...], window: WindowSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    solution = _solution()
    if max(bands) >= len(sample.image_paths):
        raise InputError(
            f"{sample.image_paths[0]}: the tile has {len(sample.image_paths)} band folders, "
            f"bands {list(bands)} index beyond them"
        )
    tile = solution.Tile(sample.sample_id, sample.name, [sample.image_paths[b] for b in bands], sample.label_path)
    full = _shared("read_tile_bands", tile)
    rows, cols = _window(window, full.shape[:2])
    image = np.ascontiguousarray(full[rows, cols])
    if sample.label_path is None:
        return image, None
    label = binary_label(_shared("read_band", sample.label_path), source=sample.label_path)
    if label.shape != full.shape[:2]:
        raise InputError(
            f"{sample.label_path}: label size {label.shape} differs from {sample.image_paths[0]} "
            f"size {full.shape[:2]}"
        )
    return image, np.ascontiguousarray(label[rows, cols])
