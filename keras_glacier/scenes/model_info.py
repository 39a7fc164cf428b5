"""What a scene prediction needs to know about the model: its band names and its class encoding.

Models carry ``band_names``, ``class_names``, ``class_values`` and ``threshold`` in their config
(README, "Converting to PyTorch"). Older models do not: their run folder's ``run.json`` (band names
and the channels read) or ``config.json`` (``bands`` as indices into the HKH 15-channel table; absent
meant the then-default channels 1,2,3,5,9) says which bands they took, and a bare 5-band model with no
run folder is taken to be the competition's five bands, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from keras_glacier.constants import BINARY_CLASSES, BINARY_VALUES
from keras_glacier.data.bands import HKH_CHANNELS
from keras_glacier.data.errors import InputError
from keras_glacier.scenes.bands import COMPETITION_BANDS

#: The channels a run of this project read before runs recorded them (config.json ``bands`` null).
_OLD_DEFAULT_CHANNELS = (1, 2, 3, 5, 9)
_PLACEHOLDER = re.compile(r"^(?:B|BAND)_?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelInfo:
    band_names: tuple[str, ...]
    band_source: str  # where the names came from, for the log
    task: str  # "binary" | "multiclass"
    class_names: tuple[str, ...]
    class_values: tuple[int, ...]
    threshold: float
    lo: tuple[float, ...] | None = None  # the normalisation range per band, for the unit check
    hi: tuple[float, ...] | None = None


def _model_config(model) -> dict:
    try:
        config = model.get_config()
    except Exception:  # functional models of other shapes, or get_config not implemented
        return {}
    return config if isinstance(config, dict) else {}


def _normalization_range(model, config: dict):
    stats = config.get("stats")
    if isinstance(stats, dict) and "lo" in stats and "hi" in stats:
        return tuple(map(float, stats["lo"])), tuple(map(float, stats["hi"]))
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "lo_init") and hasattr(layer, "hi_init"):
            return tuple(layer.lo_init), tuple(layer.hi_init)
    return None, None


def is_placeholder(names: Sequence[str]) -> bool:
    """``B1..Bn`` / ``Band1..BandN`` in order: default names that say nothing about the sensor."""
    numbers = [_PLACEHOLDER.match(str(name)) for name in names]
    return all(numbers) and [int(m[1]) for m in numbers] == list(range(1, len(names) + 1))


def band_names(num_bands: int, model_config: dict, run_config: dict, warn) -> tuple[tuple[str, ...], str]:
    """The model's input band names: model config -> run config.json ``bands`` -> competition default."""
    names = model_config.get("band_names")
    if names and len(names) == num_bands and not is_placeholder(names):
        return tuple(map(str, names)), "the model's config"
    names = run_config.get("band_names")
    if names and len(names) == num_bands and not is_placeholder(names):
        return tuple(map(str, names)), "the run's run.json"
    indices = run_config.get("bands_used", run_config.get("bands"))
    if indices is None and "bands" in run_config and num_bands == len(_OLD_DEFAULT_CHANNELS):
        indices = _OLD_DEFAULT_CHANNELS  # a run folder of a version whose default was the original work's bands
    if isinstance(indices, (list, tuple)) and len(indices) == num_bands:
        try:
            return tuple(HKH_CHANNELS[int(i)] for i in indices), "the run's config.json bands"
        except (IndexError, TypeError, ValueError):
            raise InputError(f"config.json bands {indices}: not channels of the HKH table (0..14)") from None
    if num_bands == len(COMPETITION_BANDS):
        warn(f"the model does not name its bands; assuming the competition's five "
             f"({', '.join(COMPETITION_BANDS)} in Landsat 7 names = B2, B3, B4, B6, B10 in Landsat 8/9 names); "
             f"use --band-map if it was trained on others")
        return COMPETITION_BANDS, "the competition default"
    raise InputError(f"the model takes {num_bands} bands but does not name them; name each with --band-map "
                     f"B1=FILE,...,B{num_bands}=FILE (B1..B{num_bands} in the model's input order)")


def model_info(loaded, warn) -> ModelInfo:
    """Band names, classes and threshold of a ``keras_glacier.inference.LoadedModel``."""
    config = _model_config(loaded.model)
    run = loaded.config or {}
    names, source = band_names(loaded.num_bands, config, run, warn)
    task = config.get("task") or run.get("task") or "binary"
    class_names = tuple(config.get("class_names") or run.get("class_names") or BINARY_CLASSES)
    if task == "binary":
        class_values = tuple(config.get("class_values") or BINARY_VALUES)
    else:
        class_values = tuple(config.get("class_values") or run.get("class_values") or ())
        if len(class_values) != len(class_names):
            raise InputError(f"{loaded.name}: multi-class model without class_values for {', '.join(class_names)}")
    threshold = next((t for t in (config.get("threshold"), run.get("threshold")) if t is not None), 0.5)
    lo, hi = _normalization_range(loaded.model, config)
    return ModelInfo(names, source, task, class_names, tuple(map(int, class_values)), float(threshold), lo, hi)


def nodata_value(class_values: Sequence[int]) -> int:
    """The uint8 the mask writes for no-data: the smallest value that is no class (1 for 0/255 and 0/85/170/255).

    It cannot be 255 (glacier in binary masks, lake in the phase-2 encoding) nor 0 (background), and a
    viewer that ignores the no-data tag then shows no-data as dark, like background, not as ice.
    """
    free = [value for value in range(1, 255) if value not in set(class_values)]
    return free[0]
