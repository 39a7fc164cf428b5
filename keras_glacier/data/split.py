"""Train/validation split by scene, and its JSON record.

Tiles of one scene overlap or touch each other, so a tile-level split would put near-copies of
validation pixels into training and flatter every validation metric. The split therefore assigns
whole scenes (``Sample.scene_id``: ``slice_<i>`` for HKH slices, the tile id prefix for band
folders, see ``sources.py``): seeded shuffle of the scenes, then scenes go to validation until it
holds about ``val_fraction`` of the tiles, keeping at least one scene on each side whenever there
are two or more scenes. With a single scene there is nothing to hold out without leaking, and
validation is empty.

The split is saved with the run as lists of sample ids, so a later run (or an evaluation) can use
exactly the same tiles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_glacier.data.errors import InputError
from keras_glacier.data.fileio import write_json
from keras_glacier.data.sources import Sample


def split_by_scene(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples, disjoint in scenes, each in the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction}: must be in [0, 1)")
    scenes: dict[str, int] = {}
    for sample in samples:
        scenes[sample.scene_id] = scenes.get(sample.scene_id, 0) + 1
    names = sorted(scenes)
    val_scenes: set[str] = set()
    if val_fraction > 0 and len(names) >= 2:
        target = val_fraction * len(samples)
        held = 0
        for index in np.random.default_rng(seed).permutation(len(names)):
            if held >= target or len(val_scenes) == len(names) - 1:
                break
            val_scenes.add(names[index])
            held += scenes[names[index]]
    train = [sample for sample in samples if sample.scene_id not in val_scenes]
    val = [sample for sample in samples if sample.scene_id in val_scenes]
    return train, val


def save_split(
    path: str | os.PathLike, train: Sequence[Sample], val: Sequence[Sample], **metadata: Any
) -> None:
    """Write ``{"train": [ids], "val": [ids], "train_scenes", "val_scenes", **metadata}`` atomically."""
    write_json(
        path,
        {
            **metadata,
            "train_scenes": sorted({s.scene_id for s in train}),
            "val_scenes": sorted({s.scene_id for s in val}),
            "train": [s.sample_id for s in train],
            "val": [s.sample_id for s in val],
        },
    )


def load_split(path: str | os.PathLike, samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The (train, val) samples of a saved split, looked up by id in ``samples``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: split file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read split JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("train", "val")):
        raise InputError(f"{path}: expected a JSON object with lists 'train' and 'val'")
    by_id = {sample.sample_id: sample for sample in samples}
    both = set(data["train"]) & set(data["val"])
    if both:
        raise InputError(f"{path}: sample {sorted(both)[0]!r} is listed in both train and val")
    sides = []
    for key in ("train", "val"):
        unknown = [sample_id for sample_id in data[key] if sample_id not in by_id]
        if unknown:
            raise InputError(f"{path}: {key} sample {unknown[0]!r} is not in the dataset ({len(unknown)} unknown)")
        sides.append([by_id[sample_id] for sample_id in data[key]])
    return sides[0], sides[1]
