"""Reading what an evaluation compares: prediction masks, labels, the tiles of a split."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from keras_glacier.constants import BAND_FOLDER_CLASSES as BAND_FOLDER_NAMES
from keras_glacier.constants import HKH_CLASSES as HKH_NAMES
from keras_glacier.constants import IGNORE_INDEX, PHASE2_VALUES
from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import NPY, DatasetSource, Sample, read_sample
from keras_glacier.data.split import load_split
from keras_glacier.evaluate.classes import MULTICLASS_ONLY_VALUES, ClassSet, decode_mask
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
    """Whether any prediction of ``samples`` holds a value only multi-class masks use (85, 170).

    Then every file is read as multi-class, so the band-folder labels must be multi-class too
    (:func:`check_labels_are_multiclass`): binary labels' 255 (glacier) would be scored as lake.
    """
    for sample in samples:
        path = prediction_path(pred_dir, sample)
        if np.isin(shared("read_band", path), list(MULTICLASS_ONLY_VALUES)).any():
            check_labels_are_multiclass(samples, path)
            return True
    return False


def check_labels_are_multiclass(samples: Sequence[Sample], evidence: Path) -> None:
    """Refuse multi-class predictions (``evidence`` holds 85 or 170) against band-folder labels none of
    which holds a multi-class value: those are binary 0/255 masks, and scoring them as the phase-2
    values would read every glacier pixel as lake, a silent wrong result."""
    labelled = [sample for sample in samples if sample.kind != NPY and sample.label_path]
    for sample in labelled:
        if np.isin(shared("read_band", sample.label_path), list(MULTICLASS_ONLY_VALUES)).any():
            return
    if labelled:
        raise InputError(
            f"{evidence}: a multi-class value (85 or 170) in the predictions, but the labels of these "
            f"{len(labelled)} tiles hold binary values only (e.g. {labelled[0].label_path}): their glacier (255) "
            "would be scored as lake; give the binary model's masks, or labels in the phase-2 values")


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
        saved = json.loads(path.read_text(encoding="utf-8"))
        refit = saved.get("refit_of")
        why = (f" (a --refit run trains on every tile; evaluate the validated run's model on its own split: "
               f"{path.parent / refit}/split.json)" if refit else
               " (a --val-fraction 0 run holds no tiles out: evaluate it on labelled tiles it never saw)"
               if saved.get("val_fraction") == 0 else "")
        raise InputError(f"{path}: the {subset} subset is empty{why}")
    return chosen


def multiclass_label(sample: Sample, bands: Sequence[int], classes: ClassSet) -> tuple[np.ndarray, np.ndarray]:
    """(image, multi-class label in ``classes``' index order) of a tile, read by the data layer.

    The data layer decides every pixel (HKH mask layouts, band-folder phase-2 values, no-data; a
    value outside the encoding is an error naming the file) in its class set for the tile's kind;
    the label is then re-indexed by phase-2 value into the evaluated classes, and a class the
    evaluated set lacks is an error rather than a silent background.
    """
    image, label = read_sample(sample, bands, task="multiclass")
    data_names = HKH_NAMES if sample.kind == NPY else BAND_FOLDER_NAMES
    if tuple(classes.names) == tuple(data_names):
        return image, label
    lookup = np.full(256, IGNORE_INDEX, np.uint8)
    for index, name in enumerate(data_names):
        value = PHASE2_VALUES[name]
        if value not in classes.values:
            if np.any(label == index):
                raise InputError(f"{sample.label_path}: holds class {name}, which the evaluated classes "
                                 f"{list(classes.names)} lack")
            continue
        lookup[index] = classes.values.index(value)
    return image, lookup[label]


def iter_tiles(samples: Sequence[Sample], bands: Sequence[int], chunk_size: int,
               classes: ClassSet) -> Iterator[list[TileData]]:
    """Tiles read ``chunk_size`` at a time, with binary (0/1/255) or multi-class labels."""
    if not classes.multiclass:
        yield from iter_chunks(samples, bands, chunk_size)
        return
    for start in range(0, len(samples), chunk_size):
        chunk = []
        for sample in samples[start : start + chunk_size]:
            image, label = multiclass_label(sample, bands, classes)
            check_tile_has_data(sample, image, bands)
            chunk.append(TileData(sample, image, label))
        yield chunk
