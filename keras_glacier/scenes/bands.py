"""Which file (or band of a stack) of a Landsat scene feeds which input band of the model.

The model names its bands in one numbering and the scene in another: the HKH training data is
Landsat 7 ETM+ (blue is B1, thermal is B6_VCID1), USGS Collection 2 products of Landsat 8/9 number
blue B2 and thermal B10, and the competition's tiles use those Landsat 8/9 names (B2, B3, B4, B6,
B10) for the same five bands. Matching by number alone would silently feed green as blue, so both
sides are translated to what the band *measures* (its role: blue, green, ..., thermal) with the
numbering of their own sensor, and matched on that. A numbering that cannot be told (plain ``B1.tif``
... ``B5.tif``) is tried both ways and refused when the two readings disagree.

Pure Python (no rasterio): the reader hands in file names and stack band descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keras_glacier.data.errors import InputError

L7 = "Landsat 7"  # ETM+ numbering; TM (Landsat 4/5) numbers the same bands the same way
L8 = "Landsat 8/9"  # OLI/TIRS numbering

#: What each band number measures, per numbering.
ROLES = {
    L7: {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir1", "B6": "thermal",
         "B6VCID1": "thermal", "B6VCID2": "thermal high gain", "B7": "swir2", "B8": "pan"},
    L8: {"B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir", "B6": "swir1", "B7": "swir2",
         "B8": "pan", "B9": "cirrus", "B10": "thermal", "B11": "thermal 2"},
}
#: Band keys that only one numbering has: seeing one settles the numbering of its whole list.
ONLY_L8 = {"B9", "B10", "B11"}
ONLY_L7 = {"B6VCID1", "B6VCID2"}
#: Names that say the role themselves (stack band descriptions often do).
WORD_ROLES = {"BLUE": "blue", "GREEN": "green", "RED": "red", "NIR": "nir", "SWIR": "swir1", "SWIR1": "swir1",
              "SWIR2": "swir2", "THERMAL": "thermal", "TIR": "thermal", "TIR1": "thermal", "PAN": "pan"}
#: Non-spectral inputs of the HKH table; a scene provides them only as files named so (or --band-map).
OTHER_WORDS = {"BQA", "NDVI", "NDSI", "NDWI", "ELEVATION", "SLOPE", "DEM"}

#: The competition's five bands in the HKH (Landsat 7) names: the default for a 5-band model.
COMPETITION_BANDS = ("B1", "B2", "B3", "B5", "B6_VCID1")

_SEPARATORS = re.compile(r"[\s\-.]+")
_BAND = r"B(?:AND)?_?0*(\d+)(?:_?VCID_?(\d))?"
_WHOLE = re.compile(rf"^{_BAND}$")
_TRAILING = re.compile(rf"(?:^|_)(?:SR_|ST_)?{_BAND}$")
_LEADING = re.compile(rf"^{_BAND}(?:_|$)")
_PRODUCT = re.compile(r"^L([CEOTM])(\d\d)_")


def _normal(text: str) -> str:
    return _SEPARATORS.sub("_", text.strip().upper()).strip("_")


def _key(match: re.Match) -> str:
    return f"B{int(match[1])}" + (f"VCID{match[2]}" if match[2] else "")


def band_key(name: str) -> str:
    """A model band name in canonical form: ``B6_VCID1`` -> ``B6VCID1``, ``band2`` -> ``B2``, ``ndsi`` -> ``NDSI``."""
    normal = _normal(name)
    match = _WHOLE.match(normal)
    return _key(match) if match else normal.replace("_", "")


def scene_band_key(name: str) -> str | None:
    """The band a scene file name (stem) or stack band description names, or None for other files.

    ``LC08_L2SP_..._SR_B2`` -> B2, ``LE07_..._B6_VCID_1`` -> B6VCID1, ``B2_B2_masked_02_07`` -> B2
    (the competition's prefix), ``Band 3`` -> B3, ``blue`` -> BLUE, ``..._QA_PIXEL`` -> None.
    """
    normal = _normal(name)
    if not normal:
        return None
    for pattern in (_TRAILING, _LEADING):
        match = pattern.search(normal)
        if match:
            return _key(match)
    last = normal.rsplit("_", 1)[-1]
    for word in (normal, last):
        if word in WORD_ROLES or word in OTHER_WORDS:
            return word
    return None


def sensor_numbering(file_name: str) -> str | None:
    """The numbering a Landsat product id implies (``LE07_``/``LT05_`` -> L7, ``LC08_``/``LC09_`` -> L8)."""
    match = _PRODUCT.match(file_name.upper())
    if not match:
        return None
    sensor, mission = match[1], int(match[2])
    if sensor in "ET" and mission in (4, 5, 7):
        return L7
    if sensor in "COT" and mission in (8, 9):
        return L8
    return None  # MSS and unknown missions: no numbering we know


def role(key: str, numbering: str) -> str:
    """What band ``key`` measures under ``numbering``; names that are not band numbers are their own role."""
    if key in ROLES[numbering]:
        return ROLES[numbering][key]
    if key in WORD_ROLES:
        return WORD_ROLES[key]
    return "elevation" if key in ("DEM", "ELEVATION") else key.lower()


def numbering_of(keys: Sequence[str]) -> str | None:
    """L8 or L7 if a key only exists in one of them, else None."""
    keys = set(keys)
    if keys & ONLY_L8:
        return L8
    if keys & ONLY_L7:
        return L7
    return None


def model_numbering(names: Sequence[str]) -> str:
    """Model band names are HKH (Landsat 7) names unless one exists only in Landsat 8/9 (the competition's B10).

    A plain ``B6`` counts as Landsat 8/9 here: the HKH table names its thermal bands B6_VCID1/2, so a
    model's ``B6`` comes from the competition's files (SWIR-1), as keras_glacier.data.bands reads it.
    """
    keys = [band_key(name) for name in names]
    return L8 if "B6" in keys else numbering_of(keys) or L7


@dataclass(frozen=True)
class SceneBand:
    """One band the scene offers: ``path`` and its 1-based ``index`` in that file, named ``key`` (or None)."""

    path: Path
    index: int = 1
    key: str | None = None
    label: str = ""  # how messages name it: the file name, or "band 3 ('SR_B2')" of a stack
    numbering: str | None = None  # from the Landsat product id, when the name has one

    def describe(self, numbering: str | None) -> str:
        if self.key is None:
            return self.label
        meaning = role(self.key, numbering) if numbering else None
        return f"{self.label} ({meaning})" if meaning and meaning != self.key.lower() else self.label


@dataclass(frozen=True)
class BandMatch:
    """``sources[i]`` feeds model band ``names[i]``; ``numbering``: how the scene's names were read."""

    names: tuple[str, ...]
    sources: tuple[SceneBand, ...]
    numbering: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        model = model_numbering(self.names)
        return [
            f"{name} ({role(band_key(name), model)}) <- {source.label}"
            for name, source in zip(self.names, self.sources)
        ]


def parse_band_map(text: str | Sequence[str] | None) -> dict[str, str]:
    """``--band-map B1=LE07_x_B1.TIF,B6_VCID1=B10`` (repeatable) -> {model band: source}."""
    if not text:
        return {}
    parts = [text] if isinstance(text, str) else list(text)
    mapping: dict[str, str] = {}
    for item in (piece.strip() for part in parts for piece in part.split(",")):
        if not item:
            continue
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise InputError(
                f"--band-map {item!r}: expected MODEL_BAND=FILE (or =BAND_NAME, or =N for band N of a stack)"
            )
        mapping[name.strip()] = source.strip()
    return mapping


def _model_index(names: Sequence[str], name: str) -> int:
    keys = [band_key(n) for n in names]
    key = band_key(name)
    if key not in keys:
        raise InputError(f"--band-map {name}: the model has no band {name!r} (its bands: {', '.join(names)})")
    return keys.index(key)


def _mapped_source(scene: Path, bands: Sequence[SceneBand], source: str, stack: bool) -> SceneBand:
    """A --band-map source: band N of a stack, a file path, or the name of one of the scene's bands."""
    if stack and source.isdigit():
        index = int(source)
        if not 1 <= index <= len(bands):
            raise InputError(f"--band-map ...={source}: {scene} has bands 1..{len(bands)}")
        return bands[index - 1]
    if not stack:
        for candidate in (Path(source), scene / source):
            if candidate.is_file():
                return next((b for b in bands if b.path.resolve() == candidate.resolve()),
                            SceneBand(candidate, 1, scene_band_key(candidate.stem), candidate.name))
    key = scene_band_key(source) or band_key(source)
    named = [b for b in bands if b.key == key or b.label == source]
    if len(named) == 1:
        return named[0]
    found = ", ".join(b.label for b in bands) or "nothing"
    what = "names several bands" if named else "is no file or band name"
    raise InputError(f"--band-map ...={source}: {what} of {scene} (found: {found})")


def _assign(model_names, model_roles, bands, numbering, fixed):
    """(sources or None per model band, missing model-band indices, clashes {index: [bands]})."""
    sources, missing, clashes = [], [], {}
    for index, wanted in enumerate(model_roles):
        if index in fixed:
            sources.append(fixed[index])
            continue
        hits = [b for b in bands if b.key is not None and role(b.key, b.numbering or numbering) == wanted]
        if len(hits) == 1:
            sources.append(hits[0])
        elif hits:
            sources.append(None)
            clashes[index] = hits
        else:
            sources.append(None)
            missing.append(index)
    return sources, missing, clashes


def match_bands(
    scene: Path, model_names: Sequence[str], bands: Sequence[SceneBand], band_map: Mapping[str, str] | None = None,
    stack: bool = False,
) -> BandMatch:
    """Choose a scene band for every model band, or raise InputError listing what is needed and found."""
    model_names = tuple(model_names)
    numbering_model = model_numbering(model_names)
    model_roles = [role(band_key(name), numbering_model) for name in model_names]
    fixed = {_model_index(model_names, name): _mapped_source(scene, bands, source, stack)
             for name, source in (band_map or {}).items()}
    named = [b for b in bands if b.key is not None]
    notes: list[str] = []

    if stack and not named and len(bands) == len(model_names) and not fixed:
        notes.append(f"{scene}: its bands carry no descriptions; assuming they are in the model's order "
                     f"({', '.join(model_names)}); name them with --band-map if not")
        return BandMatch(model_names, tuple(bands), None, tuple(notes))

    known = {b.numbering for b in named if b.numbering}
    if len(known) > 1:
        raise InputError(f"{scene}: mixes Landsat 7 and Landsat 8/9 files; use one scene's bands or --band-map")
    numbering = known.pop() if known else numbering_of([b.key for b in named])
    tries = [numbering] if numbering else [L8, L7]
    results = {n: _assign(model_names, model_roles, bands, n, fixed) for n in tries}
    complete = {n: r[0] for n, r in results.items() if not r[1] and not r[2]}
    if len(complete) == 2 and complete[L8] != complete[L7]:
        raise InputError(
            f"{scene}: cannot tell whether the band numbers are Landsat 7 (B1 blue) or Landsat 8/9 (B2 blue) "
            f"numbering; keep the Landsat product id in the file names (LE07_..., LC08_...) or pass --band-map "
            f"({', '.join(f'{name}=...' for name in model_names)})"
        )
    if complete:
        chosen = next(iter(complete))
        return BandMatch(model_names, tuple(complete[chosen]), numbering, tuple(notes))

    # No reading works: report the one that got furthest.
    chosen = min(tries, key=lambda n: len(results[n][1]) + len(results[n][2]))
    _, missing, clashes = results[chosen]
    needed = ", ".join(f"{name} ({r})" for name, r in zip(model_names, model_roles))
    problems = []
    if missing:
        problems.append("nothing for " + ", ".join(f"{model_names[i]} ({model_roles[i]})" for i in missing))
    for index, hits in clashes.items():
        problems.append(f"several bands for {model_names[index]}: {', '.join(b.label for b in hits)}")
    reading = f" read as {chosen} numbering" if named else ""
    found = ", ".join(b.describe(chosen) for b in named) or "no band files"
    others = len(bands) - len(named)
    if others:
        found += f" (and {others} other file{'s' if others > 1 else ''})"
    raise InputError(
        f"{scene}: cannot match the model's bands: {'; '.join(problems)}. The model needs {needed}; found{reading}: "
        f"{found}. Pass --band-map MODEL_BAND=FILE,... for the missing ones"
    )
