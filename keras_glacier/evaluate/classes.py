"""Which classes an evaluation scores, and how mask files encode them.

Class sets and encodings are fixed by the project contract (GlacierHack phase 2): binary masks are
written 0/255 (0/1 and probability masks are read too); multi-class masks carry each class's
phase-2 value: background 0, glacier / clean ice 85, debris 170, lake 255. A model says which set
it predicts in its configuration (``task``, ``class_names``, ``class_values``; models saved before
the multi-class task have none of these keys and are binary). A folder of masks says it through
its values: 85 or 170 anywhere means multi-class, with the band-folder phase-2 set (four classes)
for band-folder data and the HKH set (background, clean ice, debris) for HKH ``.npy`` slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_glacier.constants import BAND_FOLDER_CLASSES as BAND_FOLDER_NAMES
from keras_glacier.constants import BINARY_CLASSES as BINARY_NAMES
from keras_glacier.constants import HKH_CLASSES as HKH_NAMES
from keras_glacier.constants import IGNORE_INDEX, PHASE2_VALUES
from keras_glacier.data.errors import InputError

MULTICLASS_ONLY_VALUES = frozenset({85, 170})


@dataclass(frozen=True)
class ClassSet:
    """The classes of an evaluation: names (index order) and the value a mask file holds for each."""

    task: str
    names: tuple[str, ...]
    values: tuple[int, ...]

    @property
    def multiclass(self) -> bool:
        return self.task == "multiclass"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def binary(cls) -> ClassSet:
        return cls("binary", BINARY_NAMES, (0, 255))

    @classmethod
    def phase2(cls, names: Sequence[str]) -> ClassSet:
        unknown = [name for name in names if name not in PHASE2_VALUES]
        if unknown:
            raise InputError(f"class names {unknown} have no phase-2 value (known: {', '.join(PHASE2_VALUES)})")
        return cls("multiclass", tuple(names), tuple(PHASE2_VALUES[name] for name in names))

    def to_dict(self) -> dict:
        return {"task": self.task, "class_names": list(self.names), "class_values": list(self.values)}


def classes_from_config(config: dict | None, source: str = "model") -> ClassSet:
    """The class set of a model configuration (``get_config()`` or ``model.pth``'s ``config``)."""
    config = config or {}
    task = config.get("task", "binary")
    if task == "binary":
        return ClassSet.binary()
    if task != "multiclass":
        raise InputError(f"{source}: unknown task {task!r} in the model configuration")
    names = config.get("class_names")
    if not names or len(names) < 2:
        raise InputError(f"{source}: a multiclass model needs class_names in its configuration, found {names}")
    values = config.get("class_values")
    classes = ClassSet.phase2(names) if values is None else ClassSet("multiclass", tuple(names), tuple(values))
    if len(classes.values) != len(classes.names) or len(set(classes.values)) != len(classes.values):
        raise InputError(f"{source}: class_values {list(classes.values)} do not match class_names {list(names)}")
    return classes


def classes_from_values(values: Iterable[int], npy: bool) -> ClassSet:
    """The class set a folder of masks implies by the values found in it (see the module doc)."""
    values = set(int(v) for v in values)
    if not values & MULTICLASS_ONLY_VALUES:
        return ClassSet.binary()
    return ClassSet.phase2(HKH_NAMES if npy else BAND_FOLDER_NAMES)


def decode_mask(array: np.ndarray, classes: ClassSet, path: str | Path) -> np.ndarray:
    """A multi-class mask's encoded values -> uint8 class indices; any other value is a one-line error."""
    array = np.asarray(array)
    lookup = np.full(256, IGNORE_INDEX, np.uint8)
    for index, value in enumerate(classes.values):
        lookup[value] = index
    valid_values = np.isin(array, classes.values)
    if not valid_values.all():
        found = np.unique(array[~valid_values])[:5].tolist()
        allowed = ", ".join(f"{v} {n}" for n, v in zip(classes.names, classes.values))
        raise InputError(f"{path}: mask values {found} are outside the encoding ({allowed})")
    return lookup[array.astype(np.int64)]
