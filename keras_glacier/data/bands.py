"""Band selection, no-data detection and label compression: the pixel-level rules of SPEC.md.

Everything here works on in-memory numpy arrays so the rules can be tested exactly on hand-built
inputs; reading files is ``sources.py``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.errors import InputError


def parse_bands(text: str) -> tuple[int, ...]:
    """Parse a ``--bands`` value such as ``"1,2,3,5,9"`` (0-based channel indices)."""
    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise InputError(f"--bands {text!r}: expected comma-separated channel numbers like 1,2,3,5,9") from None
    check_bands(bands)
    return bands


def check_bands(bands: Sequence[int]) -> tuple[int, ...]:
    """Reject empty, negative or repeated band indices before any file is opened."""
    bands = tuple(int(b) for b in bands)
    if not bands:
        raise InputError("bands: at least one band is needed")
    if min(bands) < 0:
        raise InputError(f"bands {list(bands)}: band indices start at 0")
    if len(set(bands)) != len(bands):
        raise InputError(f"bands {list(bands)}: a band is listed twice")
    return bands


def select_bands(image: np.ndarray, bands: Sequence[int]) -> np.ndarray:
    """Copy the selected channels out as float32 (works on memory maps without reading the rest)."""
    return np.asarray(image[..., list(bands)], dtype=np.float32)


def nodata_mask(image: np.ndarray) -> np.ndarray:
    """True where a pixel carries no measurement: any band non-finite, or every band exactly 0.

    Written as a loop over bands: numpy reduces slowly along a short last axis, and this runs for
    every training tile (about 5x faster than ``.all(axis=-1)`` on 512x512x5).
    """
    first = image[..., 0]
    finite, zero = np.isfinite(first), first == 0
    for band in range(1, image.shape[-1]):
        values = image[..., band]
        finite &= np.isfinite(values)
        zero &= values == 0
    return ~finite | zero


def compress_hkh_mask(mask: np.ndarray, source: str = "mask") -> np.ndarray:
    """(H, W, 3) HKH mask -> uint8 label: (m0 OR m1) AND m2, IGNORE_INDEX where m2 == 0.

    Channel 0 is clean ice, 1 debris-covered ice, 2 the HKH region: outside the region we know
    nothing about glaciers, so those pixels are ignored rather than called background.
    """
    if mask.ndim != 3 or mask.shape[-1] != 3:
        raise InputError(f"{source}: expected an (H, W, 3) mask, got shape {tuple(mask.shape)}")
    mask = np.asarray(mask)
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise InputError(f"{source}: mask values must be 0 or 1, found {values}")
    glacier = (mask[..., 0] != 0) | (mask[..., 1] != 0)
    label = glacier.astype(np.uint8)
    label[mask[..., 2] == 0] = IGNORE_INDEX
    return label


def binary_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """A band-folder label (0/1 or 0/255, shape (H, W) or (H, W, 1)) -> uint8 0/1."""
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise InputError(f"{source}: expected a single-channel label, got shape {tuple(label.shape)}")
    positive = label != 0
    values = label[positive]
    if values.size and not (np.all(values == 1) or np.all(values == 255)):
        found = np.unique(values)[:5].tolist()
        raise InputError(f"{source}: label values must be 0/1 or 0/255, found {[0, *found]}")
    return positive.astype(np.uint8)


def ignore_nodata(label: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Mark no-data pixels of ``image`` as IGNORE_INDEX in ``label`` (in place; returned for chaining)."""
    label[nodata_mask(image)] = IGNORE_INDEX
    return label
