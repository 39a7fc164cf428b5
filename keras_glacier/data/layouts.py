"""Mask layouts: what each pixel of a label file means, for the binary and the multi-class task.

HKH masks (``slice_..._mask_...npy``, (H, W, C), values 0/1) circulate in three layouts:

* ``region``: 3 channels [clean ice, debris, HKH region] (the original work's assumption). Pixels
  outside the region (channel 2 == 0) are ignored: nothing is known about glaciers there.
* ``onehot``: 3 channels [clean ice, debris, other], at most one set per pixel; "other" is the rest
  of the labelled area and pixels with all three at 0 lie outside it (ignored).
* ``two``: 2 channels [clean ice, debris]; everything else is background, nothing is ignored.

Binary labels: 1 where clean ice or debris, 0 background, IGNORE_INDEX ignored. Multi-class
labels index ``HKH_CLASSES`` (background, clean_ice, debris); a pixel set in both the clean-ice and
the debris channel is debris (the rarer class, which the multi-class task exists to find).

Telling the 3-channel layouts apart: under ``region`` glacier pixels inside the region have two
channels set, which a one-hot mask never has; a one-hot mask with glacier has them all at
channel 2 == 0. A single mask whose glacier lies wholly outside the region is a legal ``region``
mask (a tile at the region's edge), so the layout is a property of the dataset: ``auto``
(:func:`resolve_layout`) looks at a sample of the mask files and decides ``region`` as soon as one
mask has two channels set, ``onehot`` when masks with glacier exist and none has, ``two`` for
2-channel masks. Forcing ``region`` on a dataset whose glacier pixels all lie outside channel 2 is
refused: read that way every glacier pixel would be ignored, a run training on nothing. Then
every file is checked against the layout as it is read (:func:`mask_to_label`): a mask with two
channels set in a ``onehot`` dataset, or a channel count differing from the layout's, is refused.

Band-folder labels (GlacierHack, one-channel TIFF): binary 0/1 or 0/255 (255 is glacier there);
multi-class the phase-2 values 0/85/170/255 -> ``BAND_FOLDER_CLASSES`` (background, glacier,
debris, lake). Anything else is refused naming the file and the values found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from keras_glacier.constants import (
    BAND_FOLDER_CLASSES,
    BINARY_CLASSES,
    HKH_CLASSES,
    IGNORE_INDEX,
    PHASE2_VALUES,
    TASKS,
    class_values,
)
from keras_glacier.data.errors import InputError

LAYOUTS = ("auto", "region", "onehot", "two")
#: How many mask files ``auto`` inspects before trusting the layout (more only while undecided).
AUTO_SAMPLE = 32
_DESCRIPTIONS = {
    "region": "3 channels [clean ice, debris, HKH region]",
    "onehot": "3 channels one-hot [clean ice, debris, other]",
    "two": "2 channels [clean ice, debris]",
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InputError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    return task


def class_names(kind: str, task: str) -> tuple[str, ...]:
    """The classes a dataset of ``kind`` (``"npy"`` HKH slices or ``"tiff"`` band folders) gives ``task``."""
    if check_task(task) == "binary":
        return BINARY_CLASSES
    return HKH_CLASSES if kind == "npy" else BAND_FOLDER_CLASSES


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise InputError(f"mask layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return layout


def _values_01(mask: np.ndarray, source: str) -> np.ndarray:
    """The mask as bool, refusing any value other than 0 and 1 (and shapes no layout has)."""
    if mask.ndim != 3 or mask.shape[-1] not in (2, 3):
        raise InputError(
            f"{source}: a mask of shape {tuple(mask.shape)} fits no mask layout "
            f"(expected (H, W, 3) or (H, W, 2): {'; '.join(f'{k}: {v}' for k, v in _DESCRIPTIONS.items())})"
        )
    mask = np.asarray(mask)
    if mask.dtype != bool:
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            found = np.unique(mask[bad])[:5].tolist()
            raise InputError(f"{source}: mask values must be 0 or 1, found {found}")
    return mask.astype(bool, copy=False)


def _evidence(mask: np.ndarray) -> tuple[str | None, int]:
    """("region" | "onehot" | None, count): what a 0/1 3-channel mask says about the dataset's layout.

    "region": ``count`` pixels have several channels set (impossible one-hot); "onehot": ``count``
    glacier pixels, all outside channel 2 (all ignored if read as region); None: no glacier pixel.
    """
    several = int(np.count_nonzero(mask.sum(axis=-1, dtype=np.uint8) > 1))
    if several:
        return "region", several
    glacier = int(np.count_nonzero(mask[..., 0] | mask[..., 1]))
    return ("onehot", glacier) if glacier else (None, 0)


def mask_layouts(mask: np.ndarray, source: str = "mask") -> set[str]:
    """The layouts an HKH mask can be read in on its own (values/shape problems raise InputError)."""
    mask = _values_01(mask, source)
    if mask.shape[-1] == 2:
        return {"two"}
    return {"region"} if _evidence(mask)[0] == "region" else {"region", "onehot"}


def _layout_of_file(mask: np.ndarray) -> str:
    """The layout one mask suggests on its own (hand-made samples; datasets use :func:`resolve_layout`)."""
    if mask.shape[-1] == 2:
        return "two"
    return "onehot" if _evidence(mask)[0] == "onehot" else "region"


def _check_fits(mask: np.ndarray, layout: str, source: str) -> None:
    channels = 2 if layout == "two" else 3
    if mask.shape[-1] != channels:
        raise InputError(
            f"{source}: a {mask.shape[-1]}-channel mask, but the layout is {describe_layout(layout)}"
        )
    if layout == "onehot":
        evidence, count = _evidence(mask)
        if evidence == "region":
            raise InputError(
                f"{source}: {count} pixels have several channels set, which a one-hot mask never has "
                "(a [clean ice, debris, HKH region] mask?); use --mask-layout region or auto"
            )


def mask_to_label(mask: np.ndarray, layout: str = "auto", task: str = "binary", source: str = "mask") -> np.ndarray:
    """An HKH mask -> uint8 label (see the module docstring), refusing a mask that does not fit ``layout``.

    ``auto`` (or ``""``) decides from this mask alone; datasets decide once (:func:`resolve_layout`)
    and pass the layout found, so that every file is checked against the others.
    """
    check_task(task)
    mask = _values_01(mask, source)
    if layout in ("", "auto"):
        layout = _layout_of_file(mask)
    _check_fits(mask, check_layout(layout), source)
    clean, debris = mask[..., 0], mask[..., 1]
    if task == "binary":
        label = (clean | debris).astype(np.uint8)
    else:
        label = np.zeros(mask.shape[:2], np.uint8)
        label[clean] = HKH_CLASSES.index("clean_ice")
        label[debris] = HKH_CLASSES.index("debris")
    if layout == "region":
        label[~mask[..., 2]] = IGNORE_INDEX
    elif layout == "onehot":
        label[~mask.any(axis=-1)] = IGNORE_INDEX
    return label


def resolve_layout(
    paths: Sequence[str], requested: str = "auto", load: Callable[[str], np.ndarray] | None = None,
    sample: int = AUTO_SAMPLE,
) -> str:
    """The layout of a dataset's masks: ``requested`` checked on a sample of files, or found (``auto``).

    Looks at ``sample`` files spread over the list, and at more only while no mask has a glacier
    pixel (nothing to tell the layouts apart by); see the module docstring for the rules. Masks
    of another channel count than the first, or fitting no layout, are refused naming the file.
    ``load`` reads one file (default ``np.load``).
    """
    check_layout(requested)
    if not paths:
        return "region" if requested == "auto" else requested
    load = load or (lambda path: np.load(path, mmap_mode="r"))
    count = min(len(paths), max(1, sample))
    first = sorted({int(i) for i in np.linspace(0, len(paths) - 1, count)})
    order = first + [i for i in range(len(paths)) if i not in set(first)]
    channels, seen = None, {}  # seen: evidence -> (first file, count)
    for position, index in enumerate(order):
        path = paths[index]
        mask = _values_01(load(path), path)
        if channels is None:
            channels = (path, mask.shape[-1])
        elif mask.shape[-1] != channels[1]:
            raise InputError(
                f"{path}: a {mask.shape[-1]}-channel mask, but {channels[0]} has {channels[1]}: "
                "the masks of one dataset must share a layout"
            )
        if requested != "auto":
            _check_fits(mask, requested, path)
        if mask.shape[-1] == 3:
            evidence, pixels = _evidence(mask)
            if evidence is not None and evidence not in seen:
                seen[evidence] = (path, pixels)
        if position + 1 >= len(first) and (seen or channels[1] == 2):
            break
    if channels[1] == 2:
        return "two" if requested in ("auto", "two") else requested
    if requested == "region" and "onehot" in seen and "region" not in seen:
        path, pixels = seen["onehot"]
        raise InputError(
            f"{path}: its {pixels} glacier pixels lie outside the HKH region (channel 2 == 0), and no mask looked "
            "at has glacier inside it: these are one-hot [clean ice, debris, other] masks, and read as region "
            "every glacier pixel would be ignored; use --mask-layout onehot or auto"
        )
    if requested != "auto":
        return requested
    return "onehot" if "onehot" in seen and "region" not in seen else "region"


def describe_layout(layout: str) -> str:
    return f"{layout} ({_DESCRIPTIONS[layout]})" if layout in _DESCRIPTIONS else layout


_PHASE2_INDEX = {value: index for index, value in enumerate(class_values(BAND_FOLDER_CLASSES))}


def band_folder_label(label: np.ndarray, task: str = "binary", source: str = "label") -> np.ndarray:
    """A band-folder label ((H, W) or (H, W, 1)) -> uint8 class indices; see the module docstring."""
    check_task(task)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise InputError(f"{source}: expected a single-channel label, got shape {tuple(label.shape)}")
    if task == "binary":
        positive = label != 0
        values = label[positive]
        if values.size and not (np.all(values == 1) or np.all(values == 255)):
            found = [0, *np.unique(values)[:6].tolist()]
            hint = "; phase-2 class values: use --task multiclass" if set(found) <= set(_PHASE2_INDEX) else ""
            raise InputError(f"{source}: label values must be 0/1 or 0/255, found {found}{hint}")
        return positive.astype(np.uint8)
    found = np.unique(label)
    unknown = [value for value in found.tolist() if value not in _PHASE2_INDEX]
    if unknown:
        hint = "; a binary label: use --task binary" if set(found.tolist()) <= {0, 1} else ""
        encoding = "/".join(f"{PHASE2_VALUES[name]} {name}" for name in BAND_FOLDER_CLASSES)
        raise InputError(
            f"{source}: multi-class label values must be {encoding}, found {found[:8].tolist()}{hint}"
        )
    lookup = np.zeros(256, np.uint8)
    for value, index in _PHASE2_INDEX.items():
        lookup[value] = index
    return lookup[label.astype(np.uint8)]
