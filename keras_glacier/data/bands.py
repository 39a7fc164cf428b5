"""Bands by name: the HKH channel table, ``--bands`` presets, band selection and the no-data rule.

The 15 channels of an HKH slice, in the order the release publishes them (0-based):
0 B1 blue, 1 B2 green, 2 B3 red, 3 B4 NIR, 4 B5 SWIR-1, 5 B6_VCID1 thermal (low gain),
6 B6_VCID2 thermal (high gain), 7 B7 SWIR-2, 8 B8 panchromatic, 9 BQA (quality bit flags),
10 NDVI, 11 NDSI, 12 NDWI, 13 elevation, 14 slope. These are Landsat 7 ETM+ band numbers, while
GlacierHack names its bands in Landsat 8/9 numbers (B2 blue, B3 green, B4 red, B6 SWIR-1, B10
thermal), so a band *number* means different light in the two datasets. Names are therefore
compared by what they measure (:func:`band_meaning`), never by their text alone:

* preset ``competition`` (the default) is blue, green, red, SWIR-1, thermal: B1, B2, B3, B5,
  B6_VCID1 of an HKH slice, B2, B3, B4, B6, B10 of GlacierHack band folders;
* preset ``seed`` is the original work's indices 1, 2, 3, 5, 9, meant as GlacierHack's bands but
  selecting green, red, NIR, thermal and the BQA bit flags of an HKH slice;
* preset ``all`` is every channel.

Resolving a band spec needs the dataset's band names (``DatasetSource.select_bands``); parsing
(:func:`parse_bands`) only checks the syntax, so band-folder names such as ``B10`` parse too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.errors import InputError
from keras_glacier.data.layouts import band_folder_label as _band_folder_label
from keras_glacier.data.layouts import mask_to_label as _mask_to_label

#: The channels of an HKH slice, in the published order.
HKH_CHANNELS = (
    "B1", "B2", "B3", "B4", "B5", "B6_VCID1", "B6_VCID2", "B7", "B8", "BQA",
    "NDVI", "NDSI", "NDWI", "elevation", "slope",
)  # fmt: skip
#: What each HKH channel measures (Landsat 7 ETM+ numbering), as reported to people.
HKH_MEANINGS = (
    "blue", "green", "red", "NIR", "SWIR-1", "thermal", "thermal (high gain)", "SWIR-2", "panchromatic",
    "quality flags", "NDVI", "NDSI", "NDWI", "elevation", "slope",
)  # fmt: skip
#: Landsat 8/9 band numbers (GlacierHack band folders) -> what they measure.
LANDSAT8_MEANINGS = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "NIR", "B6": "SWIR-1", "B7": "SWIR-2",
    "B8": "panchromatic", "B9": "cirrus", "B10": "thermal", "B11": "thermal (band 11)",
}  # fmt: skip
_HKH_MEANING = dict(zip((name.upper() for name in HKH_CHANNELS), HKH_MEANINGS))
_HKH_ONLY = {"B6_VCID1", "B6_VCID2", "BQA"}
_LANDSAT8_ONLY = {"B6", "B9", "B10", "B11"}
_GENERIC = re.compile(r"^band\d+$", re.IGNORECASE)

#: What the ``competition`` preset selects: GlacierHack phase 1's bands, by what they measure.
COMPETITION_MEANINGS = ("blue", "green", "red", "SWIR-1", "thermal")
#: The original work's channel indices (see the module docstring).
SEED_INDICES = (1, 2, 3, 5, 9)
PRESETS = ("competition", "seed", "all")

#: A parsed ``--bands`` value: a preset name, or channel indices and/or band names. None: the default.
BandSpec = str | tuple[int | str, ...] | None


class BandSelection(NamedTuple):
    """Channels to read (0-based, into the dataset's channels) and the dataset's names for them."""

    indices: tuple[int, ...]
    names: tuple[str, ...]


def canonical_name(name: str) -> str:
    """An HKH channel name in the table's spelling (``b6_vcid1`` -> ``B6_VCID1``); other names as given."""
    return next((known for known in HKH_CHANNELS if known.lower() == name.lower()), name)


def parse_bands(text: str) -> BandSpec:
    """Parse a ``--bands`` value: a preset, or comma-separated 0-based indices and/or band names.

    ``"competition"`` -> ``"competition"``; ``"1,2,3"`` -> ``(1, 2, 3)``; ``"b1,B2,b6_vcid1"`` ->
    ``("B1", "B2", "B6_VCID1")``. Names are checked against the dataset when the spec is resolved
    (:func:`resolve_band_spec`), since band-folder data has names of its own.
    """
    text = text.strip()
    if text.lower() in PRESETS:
        return text.lower()
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError(
            f"--bands {text!r}: give band names (B1,B2,...), 0-based indices or a preset ({', '.join(PRESETS)})"
        )
    items: list[int | str] = []
    for part in parts:
        if re.fullmatch(r"-?\d+", part):
            items.append(int(part))
        elif re.fullmatch(r"[A-Za-z][\w\-]*", part):
            items.append(canonical_name(part))
        else:
            raise InputError(f"--bands {text!r}: {part!r} is neither a band name nor a channel index")
    if any(isinstance(item, int) and item < 0 for item in items):
        raise InputError(f"--bands {text!r}: channel indices start at 0")
    keys = [item if isinstance(item, int) else item.lower() for item in items]
    if len(set(keys)) != len(keys):
        raise InputError(f"--bands {text!r}: a band is listed twice")
    return tuple(items)


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


def numbering(names: Sequence[str]) -> str | None:
    """``"landsat7"`` (HKH), ``"landsat8"`` (GlacierHack) or None when the names do not tell."""
    upper = {name.upper() for name in names}
    if upper & _HKH_ONLY or (upper and upper <= set(_HKH_MEANING) and not upper <= set(LANDSAT8_MEANINGS)):
        return "landsat7"
    if upper & _LANDSAT8_ONLY:
        return "landsat8"
    return None


def band_meaning(name: str, system: str | None) -> str | None:
    """What band ``name`` measures in ``system`` (see :func:`numbering`); None when unknown."""
    upper = name.upper()
    if system == "landsat8" and upper in LANDSAT8_MEANINGS:
        return LANDSAT8_MEANINGS[upper]
    if system == "landsat7" or upper not in LANDSAT8_MEANINGS:
        return _HKH_MEANING.get(upper)
    return None  # a bare number like B2 in a list that does not say which numbering it uses


def describe_bands(names: Sequence[str]) -> str:
    """``B2 (green), B3 (red), ...``: names with what they measure, for logs and reports."""
    system = numbering(names)
    return ", ".join(
        f"{name} ({meaning})" if (meaning := band_meaning(name, system)) and meaning.lower() != name.lower() else name
        for name in names
    )


def resolve_band_spec(spec: BandSpec | Sequence[int | str], names: Sequence[str], where: str = "") -> BandSelection:
    """Resolve a band spec (preset, indices, names, or ``--bands`` text) against a dataset's band names.

    Names match the dataset's names case-insensitively; presets are resolved by what the bands
    measure (module docstring). ``where`` (the dataset) starts error messages.
    """
    names = tuple(names)
    prefix = f"{where}: " if where else ""
    valid = f"this dataset's bands are {', '.join(names)} (or indices 0..{len(names) - 1}, or {', '.join(PRESETS)})"
    if isinstance(spec, str):
        spec = parse_bands(spec)
    if spec == "all":
        indices = tuple(range(len(names)))
    elif spec == "seed":
        indices = SEED_INDICES
    elif spec == "competition":
        system = numbering(names)
        meanings = [band_meaning(name, system) for name in names]
        missing = [m for m in COMPETITION_MEANINGS if m not in meanings]
        if missing:
            raise InputError(f"{prefix}preset competition needs {', '.join(missing)}: no band measures it; {valid}")
        indices = tuple(meanings.index(m) for m in COMPETITION_MEANINGS)
    else:
        lookup = {name.lower(): index for index, name in enumerate(names)}
        resolved = []
        for item in spec:
            if isinstance(item, str) and item.lower() not in lookup:
                raise InputError(f"{prefix}unknown band {item!r}: {valid}")
            resolved.append(lookup[item.lower()] if isinstance(item, str) else int(item))
        indices = tuple(resolved)
    if len(set(indices)) != len(indices):
        raise InputError(f"{prefix}bands {list(indices)} ({', '.join(map(str, spec))}): a band is listed twice")
    indices = check_bands(indices)
    if max(indices) >= len(names):
        raise InputError(f"{prefix}bands {list(indices)} go beyond the {len(names)} channels; {valid}")
    return BandSelection(indices, tuple(names[i] for i in indices))


def band_names_mismatch(model_names: Sequence[str], data_names: Sequence[str]) -> str | None:
    """A warning when a model's bands and the data's bands differ in what they measure, else None.

    Names are compared by meaning in each list's own numbering, so an HKH model (B1, B2, B3, B5,
    B6_VCID1) matches GlacierHack band folders (B2, B3, B4, B6, B10); generic folder names
    (``Band1``) and unknown names are compared as text except that generic ones match anything.
    """
    model_names, data_names = list(model_names), list(data_names)
    if len(model_names) != len(data_names):
        return (
            f"the model takes {len(model_names)} bands ({', '.join(model_names)}) but the data has "
            f"{len(data_names)} ({', '.join(data_names)})"
        )
    model_system, data_system = numbering(model_names), numbering(data_names)
    for model_name, data_name in zip(model_names, data_names):
        if _GENERIC.match(model_name) or _GENERIC.match(data_name):
            continue
        a, b = band_meaning(model_name, model_system), band_meaning(data_name, data_system)
        same = (a == b) if a is not None and b is not None else model_name.lower() == data_name.lower()
        if not same:
            return (
                f"the model was trained on bands {describe_bands(model_names)} but the data gives "
                f"{describe_bands(data_names)}: predictions may be wrong"
            )
    return None


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
    """(H, W, 3) [clean ice, debris, HKH region] mask -> binary uint8 label (the ``region`` layout)."""
    return _mask_to_label(mask, "region", "binary", source)


def binary_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """A band-folder label (0/1 or 0/255, shape (H, W) or (H, W, 1)) -> uint8 0/1."""
    return _band_folder_label(label, "binary", source)


def ignore_nodata(label: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Mark no-data pixels of ``image`` as IGNORE_INDEX in ``label`` (in place; returned for chaining)."""
    label[nodata_mask(image)] = IGNORE_INDEX
    return label
