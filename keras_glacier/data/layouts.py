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

Telling the 3-channel layouts apart: under ``region`` glacier pixels lie inside the region
(channel 2 == 1), so a pixel has two channels set; under ``onehot`` glacier pixels have channel 2
== 0. A mask with glacier pixels therefore fits exactly one of them; reading a one-hot mask as
``region`` would ignore every glacier pixel (a run training on nothing), so a ``region`` mask whose
glacier pixels lie mostly outside its region is refused. A mask without glacier pixels fits both
and gives the same labels under both. ``auto`` (:func:`resolve_layout`) looks at a sample of the
mask files, then every file is checked against the layout found as it is read (:func:`mask_to_label`).

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


def _fits(mask: np.ndarray) -> tuple[set[str], str]:
    """(layouts a 0/1 bool mask fits, why it fits no other 3-channel layout)."""
    if mask.shape[-1] == 2:
        return {"two"}, ""
    glacier = mask[..., 0] | mask[..., 1]
    fits, why = set(), []
    outside = np.count_nonzero(glacier & ~mask[..., 2])
    if outside * 2 <= np.count_nonzero(glacier):  # no glacier pixel, or most of them inside the region
        fits.add("region")
    else:
        why.append(f"{outside} glacier pixels lie outside the HKH region (channel 2 == 0), as in a one-hot mask")
    several = np.count_nonzero(mask.sum(axis=-1, dtype=np.uint8) > 1)
    if several == 0:
        fits.add("onehot")
    else:
        why.append(f"{several} pixels have several channels set, as in a [clean ice, debris, region] mask")
    return fits, "; ".join(why)


def mask_layouts(mask: np.ndarray, source: str = "mask") -> set[str]:
    """The layouts an HKH mask fits (empty values/shape problems raise InputError naming ``source``)."""
    return _fits(_values_01(mask, source))[0]


def mask_to_label(mask: np.ndarray, layout: str = "auto", task: str = "binary", source: str = "mask") -> np.ndarray:
    """An HKH mask -> uint8 label (see the module docstring), refusing a mask that does not fit ``layout``.

    ``auto`` (or ``""``) decides from this mask alone; datasets decide once (:func:`resolve_layout`)
    and pass the layout found, so that every file is checked against the others.
    """
    check_task(task)
    mask = _values_01(mask, source)
    fits, why = _fits(mask)
    if layout in ("", "auto"):
        if not fits:
            raise InputError(f"{source}: the mask fits no layout ({why})")
        layout = "two" if "two" in fits else ("region" if "region" in fits else "onehot")
    elif check_layout(layout) not in fits:
        hint = f"; it looks like {' or '.join(sorted(fits))}" if fits else ""
        reason = why or "wrong channel count"
        raise InputError(f"{source}: not a {layout} mask ({_DESCRIPTIONS[layout]}): {reason}{hint}")
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

    ``auto`` looks at ``sample`` files spread over the list, and at more only while they cannot
    tell ``region`` from ``onehot`` (no glacier pixel yet); masks fitting no layout, or fitting
    another layout than earlier files, are refused naming both files. ``load`` reads one file
    (default ``np.load``).
    """
    check_layout(requested)
    if not paths:
        return "region" if requested == "auto" else requested
    load = load or (lambda path: np.load(path, mmap_mode="r"))
    count = min(len(paths), max(1, sample))
    first = sorted({int(i) for i in np.linspace(0, len(paths) - 1, count)})
    order = first + [i for i in range(len(paths)) if i not in set(first)]
    candidates, decided_by = None, None
    for position, index in enumerate(order):
        path = paths[index]
        mask = _values_01(load(path), path)
        fits, why = _fits(mask)
        if requested != "auto":
            if requested not in fits:
                mask_to_label(mask, requested, source=path)  # raises with the reason
            if position + 1 >= len(first):
                return requested
            continue
        if not fits:
            raise InputError(f"{path}: the mask fits no layout ({why})")
        narrowed = fits if candidates is None else candidates & fits
        if not narrowed:
            raise InputError(
                f"{path}: a {'/'.join(sorted(fits))} mask, but {decided_by} is a {'/'.join(sorted(candidates))} "
                "mask: the masks of one dataset must share a layout"
            )
        if narrowed != candidates:
            decided_by = path
        candidates = narrowed
        if position + 1 >= len(first) and len(candidates) == 1:
            break
    if len(candidates) == 1:
        return next(iter(candidates))
    return "region"  # no mask has a glacier pixel: region and onehot give the same labels


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
