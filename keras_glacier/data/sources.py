"""Find the samples of a dataset folder, pair their files, and read them.

Two layouts are understood (see :func:`discover`; "README, Data formats" has the user's view):

* **HKH slices**, under either naming scheme (one per folder; both in one folder is refused):
  the release's ``slice_<scene>_img_<k>.npy`` / ``slice_<scene>_mask_<k>.npy`` (``k`` often
  zero-padded, ``000``; ``<scene>`` any name) and the original work's ``slice_<i>_image_<j>.npy`` /
  ``slice_<i>_mask_<j>.npy``. Images (H, W, channels) are paired with masks by (scene, index),
  never by sort order, numbers compared as numbers (``slice_04_image_007`` pairs with
  ``slice_4_mask_7``). Slices are read through memory maps and only the selected channels (and
  only the requested window) are copied out, so a dataset of tens of thousands of slices never has
  to fit in memory; images may be float64 with NaN no-data. The masks' layout is decided once per
  dataset (``layouts.resolve_layout``) and stored in every ``Sample``. Scene id: ``slice_<scene>``.
  Band names: ``bands.HKH_CHANNELS`` for 15-channel slices, else ``channel<k>``.
* **Band folders** (GlacierHack): ``Band1..BandN/<tile>.tif`` and optionally ``label/<tile>.tif``
  (also ``labels``, ``mask`` or ``masks``), labels 0/1 or 0/255 (binary) or 0/85/170/255
  (multi-class). Finding, ordering and matching the files is ``solution.py``'s job (one copy of
  those rules, shared with inference); it is imported lazily because it imports torch. Band
  selection indexes the band folders in band-number order. A band is named by its files' prefix
  when they all share one like ``B2`` (``B2_B2_masked_02_07.tif``), else by its folder. Scene id:
  the tile id without its last numeric component when it has at least two (``02_07`` -> ``02``:
  tiles cut from one scene share the prefix), otherwise the tile id itself.

Every problem with the user's files raises :class:`~keras_glacier.data.errors.InputError` naming
the file; ``solution.InputError`` from the shared helpers is re-raised as that type.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from keras_glacier.constants import DEFAULT_BAND_PRESET, class_values
from keras_glacier.data.bands import (
    HKH_CHANNELS,
    BandSelection,
    BandSpec,
    check_bands,
    ignore_nodata,
    resolve_band_spec,
    select_bands,
)
from keras_glacier.data.errors import InputError
from keras_glacier.data.layouts import (
    band_folder_label,
    check_layout,
    check_task,
    class_names,
    mask_to_label,
    resolve_layout,
)
from keras_glacier.data.npyfile import load_npy, npy_layout
from keras_glacier.shared import shared, solution_module

# The npy readers kept their old private names here too.
_load_npy, _npy_layout = load_npy, npy_layout

NPY = "npy"
TIFF = "tiff"
LABEL_FOLDER_NAMES = ("label", "labels", "mask", "masks")

#: HKH slice files: images named by the release (``img``) or the original work (``image``); masks alike.
_SLICE_RE = re.compile(r"^slice_(?P<scene>.+?)_(?P<kind>img|image|mask)_(?P<index>\d+)\.npy$")
_ID_SEPARATORS = re.compile(r"[_\-.\s]+")
_BAND_PREFIX = re.compile(r"^(B\d{1,2})_", re.IGNORECASE)

#: (top, left, height, width) of the part of a tile to read.
Window = tuple[int, int, int, int]
#: A window, or a function choosing one from the tile's (height, width) once the reader knows it.
WindowSpec = Window | Callable[[tuple[int, int]], Window] | None


@dataclass(frozen=True)
class Sample:
    """One image tile and its label file; plain strings so it pickles and goes into JSON splits.

    ``mask_layout`` and ``task`` say how the label file is read (``read_sample``): ``discover``
    fills them for the whole dataset; a hand-made Sample reads a region mask (the original work's
    layout, as before layouts existed) unless given another layout or ``auto`` (decide per file).
    """

    sample_id: str  # unique within a dataset: the image file stem (npy) or the tile id (TIFF)
    scene_id: str  # tiles sharing a scene id never end up on both sides of a split
    kind: str  # NPY or TIFF
    image_paths: tuple[str, ...]  # npy: (image,); TIFF: one file per band folder, Band1 first
    label_path: str | None
    name: str  # file name of the tile (the Band1 file for TIFF): predictions are written under it
    mask_layout: str = "region"  # npy masks: region | onehot | two | auto (``layouts.py``; auto: per file)
    task: str = "binary"  # binary | multiclass


@dataclass(frozen=True)
class DatasetSource:
    """What :func:`discover` found: the layout, the samples, the channels' names, the classes."""

    kind: str
    root: Path
    samples: tuple[Sample, ...]
    band_names: tuple[str, ...] = ()  # every channel of the data (npy) or band folder (TIFF), in order
    task: str = "binary"
    mask_layout: str | None = None  # npy: the masks' layout found or checked; None for band folders

    @property
    def has_labels(self) -> bool:
        return all(sample.label_path is not None for sample in self.samples)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Label index -> class name for this dataset and task (``layouts.class_names``)."""
        return class_names(self.kind, self.task)

    @property
    def class_values(self) -> tuple[int, ...]:
        """The mask value of each class: (0, 255) binary, the phase-2 values multi-class."""
        return class_values(self.class_names)

    @property
    def default_bands(self) -> tuple[int, ...]:
        """Preset ``competition`` for HKH slices; every band folder, in order, for TIFF folders."""
        return self.select_bands(None).indices

    def select_bands(self, spec: BandSpec | Sequence[int | str] = None) -> BandSelection:
        """Resolve a band spec (preset, names, indices, ``--bands`` text; None: default) to indices and names."""
        if spec is None:
            spec = "all" if self.kind == TIFF else DEFAULT_BAND_PRESET
        # npy channel names come from the first image's header: errors name that file.
        where = self.samples[0].image_paths[0] if self.kind == NPY and self.samples else str(self.root)
        return resolve_band_spec(spec, self.band_names, where=where)

    def resolve_bands(self, bands: BandSpec | Sequence[int | str] = None) -> tuple[int, ...]:
        """The channel indices to read: ``bands`` (any spec :meth:`select_bands` takes) or the default."""
        return self.select_bands(bands).indices


def tile_scene_id(tile_id: str) -> str:
    """``02_07`` -> ``02``; ``001`` -> ``001``; ``a_b`` -> ``a_b`` (see the module docstring)."""
    parts = [part for part in _ID_SEPARATORS.split(tile_id) if part]
    if len(parts) >= 2 and parts[-1].isdigit():
        return "_".join(parts[:-1])
    return tile_id


def discover(root: str | os.PathLike, task: str = "binary", mask_layout: str = "auto") -> DatasetSource:
    """Detect the layout of ``root`` and list its samples, with every pairing problem as an InputError.

    ``task`` (binary | multiclass) and ``mask_layout`` (auto | region | onehot | two; HKH masks
    only) decide how labels are read; the layout is resolved here, once (``layouts.py``). HKH
    slices win when a folder holds both dataset layouts (band folders are then ignored).
    """
    check_task(task)
    check_layout(mask_layout)
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (pass the folder holding the slices or band folders)")
    entries = sorted(os.listdir(root))
    if not entries:
        raise InputError(f"{root}: dataset folder is empty")
    if any(_SLICE_RE.match(name) for name in entries):
        return _discover_npy(root, entries, task, mask_layout)
    subfolders = [name for name in entries if (root / name).is_dir()]
    if subfolders and any(solution_module().band_number(name) is not None for name in subfolders):
        return _discover_band_folders(root, entries, task)
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise InputError(
        f"{root}: no slice_<scene>_img_<k>.npy or slice_<i>_image_<j>.npy files and no Band1..BandN folders "
        f"(found {shown})"
    )


def _slice_files(root: Path, entries: list[str]) -> tuple[str, dict[str, dict[tuple, str]]]:
    """(image word, {"image"/"mask": {(scene, index): file name}}), refusing mixed schemes and clashes."""
    files: dict[str, dict[tuple, str]] = {"image": {}, "mask": {}}
    examples: dict[str, str] = {}
    for name in entries:
        match = _SLICE_RE.match(name)
        if not match:
            continue
        scene, kind = match["scene"], match["kind"]
        if kind != "mask":
            examples.setdefault(kind, name)
        key = (int(scene) if scene.isdigit() else scene, int(match["index"]))
        kind = "mask" if kind == "mask" else "image"
        if key in files[kind]:
            raise InputError(f"{root / name}: same slice id as {files[kind][key]} (scene {key[0]}, index {key[1]})")
        files[kind][key] = name
    if len(examples) > 1:
        raise InputError(
            f"{root}: two slice naming schemes in one folder ({examples['img']} and {examples['image']}); keep one"
        )
    return next(iter(examples), "img"), files


def _discover_npy(root: Path, entries: list[str], task: str, mask_layout: str) -> DatasetSource:
    image_word, files = _slice_files(root, entries)
    images, masks = files["image"], files["mask"]
    for key, name in images.items():  # the missing partner named as the dataset spells it (zero-padded or not)
        if key not in masks:
            partner = name.replace(f"_{image_word}_", "_mask_", 1)
            raise InputError(f"{root / name}: no mask file {partner} for this image")
    for key, name in masks.items():
        if key not in images:
            partner = name.replace("_mask_", f"_{image_word}_", 1)
            raise InputError(f"{root / name}: no image file {partner} for this mask")
    keys = sorted(images, key=lambda key: (str(type(key[0])), key))
    layout = resolve_layout([str(root / masks[key]) for key in keys], mask_layout, load=load_npy)
    samples = tuple(
        Sample(
            sample_id=Path(images[key]).stem,
            scene_id=f"slice_{key[0]}",
            kind=NPY,
            image_paths=(str(root / images[key]),),
            label_path=str(root / masks[key]),
            name=images[key],
            mask_layout=layout,
            task=task,
        )
        for key in keys
    )
    return DatasetSource(NPY, root, samples, _npy_band_names(samples), task, layout)


def _npy_band_names(samples: Sequence[Sample]) -> tuple[str, ...]:
    """HKH_CHANNELS for 15-channel slices, else ``channel0..``: read from the first image's header."""
    if not samples:
        return HKH_CHANNELS
    path = samples[0].image_paths[0]
    shape = load_npy(path).shape
    if len(shape) != 3:
        raise InputError(f"{path}: expected an (H, W, channels) image, got shape {tuple(shape)}")
    return HKH_CHANNELS if shape[-1] == len(HKH_CHANNELS) else tuple(f"channel{k}" for k in range(shape[-1]))


def _discover_band_folders(root: Path, entries: list[str], task: str) -> DatasetSource:
    band_dirs = shared("resolve_band_dirs", root)
    label_dirs = [name for name in entries if name.lower() in LABEL_FOLDER_NAMES and (root / name).is_dir()]
    if len(label_dirs) > 1:
        raise InputError(f"{root}: several label folders ({', '.join(label_dirs)}); keep one")
    label_dir = str(root / label_dirs[0]) if label_dirs else None
    tiles = shared("match_tiles", band_dirs, label_dir)
    samples = tuple(
        Sample(
            sample_id=tile.tile_id,
            scene_id=tile_scene_id(tile.tile_id),
            kind=TIFF,
            image_paths=tuple(tile.band_paths),
            label_path=tile.label_path,
            name=tile.name,
            task=task,
        )
        for tile in tiles
    )
    return DatasetSource(TIFF, root, samples, band_folder_names([name for name, _ in band_dirs], samples), task)


def band_folder_names(folders: Sequence[str], samples: Sequence[Sample]) -> tuple[str, ...]:
    """Each band's name: its files' common prefix like ``B2`` when all bands have a distinct one, else its folder."""
    prefixes = []
    for band in range(len(folders)):
        found = {_prefix(Path(sample.image_paths[band]).name) for sample in samples}
        prefixes.append(found.pop() if len(found) == 1 else None)
    if samples and None not in prefixes and len(set(prefixes)) == len(prefixes):
        return tuple(prefixes)
    return tuple(folders)


def _prefix(file_name: str) -> str | None:
    match = _BAND_PREFIX.match(file_name)
    return match[1].upper() if match else None


def _window(spec: WindowSpec, shape: tuple[int, int]) -> tuple[slice, slice]:
    if spec is None:
        return slice(None), slice(None)
    top, left, height, width = spec(shape) if callable(spec) else spec
    if top < 0 or left < 0 or top + height > shape[0] or left + width > shape[1]:
        raise ValueError(f"window {(top, left, height, width)} outside a tile of size {shape}")
    return slice(top, top + height), slice(left, left + width)


def read_sample(
    sample: Sample, bands: Sequence[int], window: WindowSpec = None, *, task: str | None = None,
    mask_layout: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image float32 (h, w, C) raw band values, label uint8 (h, w) or None without labels).

    Labels: class indices (binary 0/1), IGNORE_INDEX (255) outside the HKH region and at no-data
    pixels (see ``bands.nodata_mask``). ``task``/``mask_layout`` default to the sample's.
    ``window`` restricts reading to part of the tile (for random crops); it may be a function of
    the tile's full size, which the reader learns first. A tile whose selected bands are NaN/inf
    everywhere is an error (checked on whole-tile reads).
    """
    bands = check_bands(bands)
    if task is not None or mask_layout is not None:
        sample = replace(sample, task=task or sample.task, mask_layout=mask_layout or sample.mask_layout)
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
    array = load_npy(path)
    if array.ndim != 3:
        raise InputError(f"{path}: expected an (H, W, channels) image, got shape {tuple(array.shape)}")
    if max(bands) >= array.shape[-1]:
        raise InputError(
            f"{path}: has {array.shape[-1]} channels, but bands {list(bands)} need at least {max(bands) + 1}"
        )
    rows, cols = _window(window, array.shape[:2])
    image = select_bands(array[rows, cols], bands)
    mask = load_npy(sample.label_path)
    if mask.ndim != 3:
        mask_to_label(mask, sample.mask_layout, sample.task, source=sample.label_path)  # refuses the shape
    if mask.shape[:2] != array.shape[:2]:
        raise InputError(
            f"{sample.label_path}: mask size {mask.shape[:2]} differs from image {path} size {array.shape[:2]}"
        )
    label = mask_to_label(np.asarray(mask[rows, cols]), sample.mask_layout, sample.task, source=sample.label_path)
    return image, label


def _read_tiff(
    sample: Sample, bands: tuple[int, ...], window: WindowSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    solution = solution_module()
    if max(bands) >= len(sample.image_paths):
        raise InputError(
            f"{sample.image_paths[0]}: the tile has {len(sample.image_paths)} band folders, "
            f"bands {list(bands)} index beyond them"
        )
    tile = solution.Tile(sample.sample_id, sample.name, [sample.image_paths[b] for b in bands], sample.label_path)
    full = shared("read_tile_bands", tile)
    rows, cols = _window(window, full.shape[:2])
    image = np.ascontiguousarray(full[rows, cols])
    if sample.label_path is None:
        return image, None
    label = band_folder_label(shared("read_band", sample.label_path), sample.task, source=sample.label_path)
    if label.shape != full.shape[:2]:
        raise InputError(
            f"{sample.label_path}: label size {label.shape} differs from {sample.image_paths[0]} "
            f"size {full.shape[:2]}"
        )
    return image, np.ascontiguousarray(label[rows, cols])
