"""Reading what an evaluation compares: prediction masks, labels, the tiles of a split."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from keras_glacier.data.bands import ignore_nodata
from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import NPY, DatasetSource, Sample, read_sample
from keras_glacier.data.split import load_split
from keras_glacier.evaluate.classes import HKH_NAMES, MULTICLASS_ONLY_VALUES, ClassSet, decode_mask
from keras_glacier.inference import TileData, check_tile_has_data, iter_chunks, output_name, shared

SUBSETS = ("val", "train", "all")


def prediction_mask(array: np.ndarray, path: Path, threshold: float = 0.5) -> np.ndarray:
    """A binary prediction file's content as a boolean mask: 0/255 and 0/1 masks, or probabilities in [0, 1]."""
    if not np.isfinite(array).all():
        raise InputError(f"{path}: prediction has NaN/inf values")
    positive = array[array != 0]
    if positive.size and np.all(positive == 255):
        return array != 0
    if positive.size and (positive.min() < 0 or positive.max() > 1):
        found = np.unique(positive)[:5].tolist()
        raise InputError(f"{path}: prediction values must be 0/255, 0/1 or probabilities in [0, 1]; found {found}")
    return array > threshold


def prediction_path(pred_dir: Path, sample: Sample) -> Path:
    name = output_name(sample)
    path = pred_dir / name
    if not path.is_file():
        raise InputError(f"{path}: missing prediction for tile {sample.sample_id!r} (expected file {name})")
    return path


def read_prediction(pred_dir: Path, tile: TileData, threshold: float = 0.5, classes: ClassSet | None = None):
    """The tile's prediction from ``pred_dir/<name predict writes>``, checked against the label's size:
    a boolean mask (binary) or class indices decoded from the phase-2 values (multi-class)."""
    path = prediction_path(pred_dir, tile.sample)
    array = shared("read_band", path)
    if array.shape != tile.label.shape:
        raise InputError(
            f"{path}: prediction size {tuple(array.shape)} differs from the label size {tuple(tile.label.shape)} "
            f"({tile.sample.label_path})"
        )
    if classes is not None and classes.multiclass:
        return decode_mask(array, classes, path)
    return prediction_mask(array, path, threshold)


def folder_has_multiclass_values(pred_dir: Path, samples: Sequence[Sample]) -> bool:
    """Whether any prediction of ``samples`` holds a value only multi-class masks use (85, 170)."""
    for sample in samples:
        array = shared("read_band", prediction_path(pred_dir, sample))
        if np.isin(array, list(MULTICLASS_ONLY_VALUES)).any():
            return True
    return False


def select_samples(source: DatasetSource, split: str | Path | None, subset: str | None = None) -> list[Sample]:
    """All samples, or those of ``subset`` (default val) in a run's split.json (a run folder means its split.json)."""
    if split is None:
        if subset is not None:
            raise InputError(f"--subset {subset}: needs --split (a run's split.json)")
        return list(source.samples)
    subset = subset or "val"
    if subset not in SUBSETS:
        raise InputError(f"--subset {subset!r}: must be one of {', '.join(SUBSETS)}")
    path = Path(split)
    if path.is_dir():
        path = path / "split.json"
    train, val = load_split(path, source.samples)
    chosen = {"train": train, "val": val, "all": train + val}[subset]
    if not chosen:
        raise InputError(f"{path}: the {subset} subset is empty")
    return chosen


def multiclass_label(sample: Sample, image: np.ndarray, classes: ClassSet) -> np.ndarray:
    """A tile's multi-class label (uint8 class indices, IGNORE_INDEX for no-data and outside HKH).

    Band folders: the label file's phase-2 values decoded by ``classes`` (a value outside the
    encoding is an error naming the file). HKH slices: the mask's clean-ice and debris channels
    (debris where both are set), ignored outside the HKH region (channel 2), as the binary label
    is made. These are the data contract's rules; the data layer's own multi-class reader, once it
    exists, should replace this function.
    """
    path = sample.label_path
    if sample.kind == NPY:
        if classes.names != HKH_NAMES:
            raise InputError(f"{path}: HKH masks hold the classes {list(HKH_NAMES)}, not {list(classes.names)}")
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
        if mask.ndim != 3 or mask.shape[-1] != 3 or mask.shape[:2] != image.shape[:2]:
            raise InputError(f"{path}: expected an (H, W, 3) mask of the image's size, got shape {mask.shape}")
        label = np.zeros(mask.shape[:2], np.uint8)
        label[mask[..., 0] != 0] = 1
        label[mask[..., 1] != 0] = 2
        label[mask[..., 2] == 0] = 255
    else:
        array = shared("read_band", path)
        if array.shape != image.shape[:2]:
            raise InputError(f"{path}: label size {array.shape} differs from the image size {image.shape[:2]}")
        label = decode_mask(array, classes, path)
    return ignore_nodata(label, image)


def iter_tiles(samples: Sequence[Sample], bands: Sequence[int], chunk_size: int,
               classes: ClassSet) -> Iterator[list[TileData]]:
    """Tiles read ``chunk_size`` at a time, with binary (0/1/255) or multi-class labels."""
    if not classes.multiclass:
        yield from iter_chunks(samples, bands, chunk_size)
        return
    for start in range(0, len(samples), chunk_size):
        chunk = []
        for sample in samples[start : start + chunk_size]:
            # The binary reader checks an HKH mask's layout on the way; band-folder labels with phase-2
            # values are not binary, so the image is read without them.
            readable = sample if sample.kind == NPY else dataclasses.replace(sample, label_path=None)
            image, _ = read_sample(readable, bands)
            check_tile_has_data(sample, image, bands)
            chunk.append(TileData(sample, image, multiclass_label(sample, image, classes)))
        yield chunk
