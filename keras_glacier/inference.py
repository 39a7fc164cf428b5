"""What ``predict`` and ``evaluate`` share: load a trained run, wrap the Keras model as a ``Forward``, read tiles.

Tiling, flip TTA, blending and mask writing are *not* here: they are ``solution.py``'s
(``predict_tiles``, ``write_mask_tiff``), so the Keras model and the PyTorch submission turn
probabilities into masks in exactly one way. This module only adapts the Keras model to
``solution.Forward`` (raw float32 NHWC bands -> probabilities) and decides which bands to read.

``solution`` imports torch at module level, so it is imported on first use, as in the data layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.constants import OUTPUT_STRIDE
from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import NPY, TIFF, DatasetSource, Sample, read_sample
from keras_glacier.shared import shared, solution_module  # noqa: F401  (re-exported for the jobs)
from keras_glacier.training.run_folder import CONFIG_FILE, RUN_FILE

MODEL_FILE = "model.keras"
STATS_FILE = "stats.json"

#: solution.Forward: float32 (N, H, W, C) raw bands -> glacier probabilities (N, H, W) (binary model)
#: or class probabilities (N, H, W, K) (K-class model).
Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoadedModel:
    """A Keras model and what its run folder says about it (``config`` is {} without a config.json)."""

    model: object  # keras.Model
    path: Path | None  # the .keras file; None for a model passed in memory
    config: dict = field(default_factory=dict)

    @property
    def num_bands(self) -> int:
        return int(self.model.inputs[0].shape[-1])

    @property
    def num_outputs(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"model '{self.model.name}'"

    @property
    def settings(self) -> dict:
        """Task, classes, class values, threshold and band names, completed like model.pth's configuration.

        The model's own configuration (a GlacierDeepLab's ``get_config``) wins over the run's
        config.json; a model with neither is binary with threshold 0.5.
        """
        own: dict = {}
        try:
            config = self.model.get_config()
            if isinstance(config, dict) and "band_names" in config:
                own = config
        except (NotImplementedError, TypeError, AttributeError):
            pass
        settings = {"num_bands": self.num_bands}
        for key in ("task", "class_names", "class_values", "threshold", "band_names"):
            value = own.get(key, self.config.get(key))
            if value is not None:
                settings[key] = list(value) if isinstance(value, tuple) else value
        if "task" not in settings and self.num_outputs > 1:
            raise InputError(f"{self.name}: a {self.num_outputs}-class model without class names in its "
                             f"configuration or the run's {CONFIG_FILE}")
        solution = solution_module()
        try:
            return solution.complete_config(settings, self.name)
        except solution.InputError as exc:
            raise InputError(str(exc)) from exc


def resolve_model_path(source: str | os.PathLike) -> Path:
    """A run folder means its ``model.keras``; anything else must be an existing ``.keras`` file."""
    path = Path(source)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise InputError(f"{path}: no {MODEL_FILE} in this run folder")
        return path / MODEL_FILE
    if not path.exists():
        raise InputError(f"{path}: model not found (give a run folder or a .keras file)")
    if path.suffix != ".keras":
        raise InputError(f"{path}: not a .keras model file (give a run folder or a .keras file)")
    import zipfile

    if not zipfile.is_zipfile(path):  # else Keras says "File not found" of a file that is there
        raise InputError(f"{path}: not a .keras archive (not a zip file: truncated, or another format?)")
    return path


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def read_run_config(model_path: Path) -> dict:
    """The run's settings (``config.json``) completed by its facts (``run.json``: bands used, classes,
    threshold) next to the model (a run folder also holds ``best.keras``), or {}."""
    config = _read_json_object(model_path.parent / CONFIG_FILE)
    facts = _read_json_object(model_path.parent / RUN_FILE)
    return {**config, **facts} if facts else config


def load_run(source) -> LoadedModel:
    """Load a run folder, a ``.keras`` file, or wrap an in-memory ``keras.Model``."""
    import keras

    import keras_glacier.model  # noqa: F401  (registers the custom layers for deserialisation)

    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, keras.Model):
        loaded = LoadedModel(source, None, {})
    else:
        path = resolve_model_path(source)
        config = read_run_config(path)
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # zip, JSON and deserialisation errors all mean "not a usable model"
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise InputError(f"{path}: cannot load as a Keras model ({reason})") from exc
        loaded = LoadedModel(model, path, config)
    check_finite_weights(loaded.model, loaded.name)
    inputs, outputs = loaded.model.inputs, loaded.model.outputs
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise InputError(f"{loaded.name}: not a segmentation model taking (B, H, W, bands) and returning (B, H, W, K)")
    expected = solution_module().num_outputs(loaded.settings)
    if loaded.num_outputs != expected:
        settings = loaded.settings
        raise InputError(
            f"{loaded.name}: the model has {loaded.num_outputs} outputs but its configuration describes a "
            f"{settings['task']} model with classes {', '.join(settings['class_names'])} ({expected} outputs)"
        )
    return loaded


def check_finite_weights(model, name) -> None:
    """Refuse a network with NaN or infinite weights (one that diverged in training): its NaN
    probabilities would threshold to all-background masks without a word."""
    import keras

    broken = [variable.path for variable in model.weights
              if "float" in str(variable.dtype) and not np.isfinite(keras.ops.convert_to_numpy(variable)).all()]
    if broken:
        shown = ", ".join(broken[:3]) + (f" (+{len(broken) - 3} more)" if len(broken) > 3 else "")
        raise InputError(f"{name}: weights hold NaN or infinite values ({shown}): the network diverged in "
                         "training; train it again (e.g. at a lower --lr)")


def keras_forward(model) -> Forward:
    """A ``solution.Forward`` running ``model`` in inference mode, compiled once per input shape.

    One output: the glacier probability (sigmoid), (N, H, W); K outputs: the class probabilities
    (softmax), (N, H, W, K).

    On JAX the whole sigmoid(model(x)) is one ``jax.jit`` function of the weights and the batch, so
    XLA compiles it once per (N, H, W, C) and later calls only run it; the weights are arguments,
    so the forward always uses the model's current weights. A batch smaller than the largest one
    already seen with the same (H, W, C) (the last, partial batch of a run) is zero-padded to that
    size and the padding dropped from the result, which saves a compilation per remainder size.
    """
    import keras

    single = int(model.outputs[0].shape[-1]) == 1
    if keras.backend.backend() == "jax":
        import jax

        @jax.jit
        def probabilities(trainable, non_trainable, batch):
            logits, _ = model.stateless_call(trainable, non_trainable, batch, training=False)
            logits = logits.astype("float32")
            return jax.nn.sigmoid(logits)[..., 0] if single else jax.nn.softmax(logits, axis=-1)

        def run(batch: np.ndarray) -> np.ndarray:
            # Current values on every call: Keras' own fit/predict donate (delete) the old buffers.
            trainable = [variable.value for variable in model.trainable_variables]
            non_trainable = [variable.value for variable in model.non_trainable_variables]
            return np.asarray(probabilities(trainable, non_trainable, batch))

    else:  # other Keras backends: eager, still correct

        def run(batch: np.ndarray) -> np.ndarray:
            logits = keras.ops.cast(model(batch, training=False), "float32")
            if not single:
                return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
            return keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))[..., 0]

    largest: dict[tuple[int, ...], int] = {}

    def forward(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        count, shape = len(batch), tuple(batch.shape[1:])
        size = max(count, largest.get(shape, 0))
        largest[shape] = size
        if size > count:
            batch = np.concatenate([batch, np.zeros((size - count, *shape), np.float32)])
        return run(batch)[:count]

    return forward


def check_tiling(window: int, overlap: int, batch_size: int) -> None:
    """Reject tiling settings before any model is loaded (predict_tiles would, but later)."""
    if window <= 0 or window % OUTPUT_STRIDE:
        raise InputError(f"--window {window}: must be a positive multiple of {OUTPUT_STRIDE}")
    if not 0 <= overlap < window:
        raise InputError(f"--overlap {overlap}: must be at least 0 and below --window {window}")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise InputError(f"--threshold {threshold}: must be in [0, 1) (a pixel is glacier when prob > threshold)")


def choose_bands(
    source: DatasetSource, bands: Sequence[int] | None = None, config: dict | None = None
) -> tuple[int, ...]:
    """Bands to read: explicit ``bands``, else (npy slices only) the run's, else the dataset default.

    The run's bands (``run.json`` ``bands_used``, else ``config.json`` ``bands``) are channels of the
    15-channel slices, so they only apply to
    slices; band folders are read whole, in band-number order, as ``solution.py`` does.
    """
    if bands is None and source.kind == NPY and config:
        # run.json's channel numbers (what the run read) win over config.json's spec (a preset or names).
        bands = config.get("bands_used", config.get("bands"))
    return source.resolve_bands(bands)


def band_names_warning(loaded: LoadedModel, source: DatasetSource, bands: Sequence[int]) -> str | None:
    """A warning when the data's bands measure something else than the model's, else None.

    Uses the data room's ``band_names_mismatch`` (names compared by what they measure) when it is
    there; otherwise names are compared as text, generic folder names (``Band1``) matching anything.
    """
    model_names = loaded.settings.get("band_names")
    data_names = getattr(source, "band_names", None)
    if not model_names or not data_names or max(bands) >= len(data_names):
        return None
    chosen = [str(data_names[index]) for index in bands]
    try:
        from keras_glacier.data.bands import band_names_mismatch
    except ImportError:
        band_names_mismatch = _names_differ
    return band_names_mismatch(list(model_names), chosen)


def _names_differ(model_names: Sequence[str], data_names: Sequence[str]) -> str | None:
    import re

    generic = re.compile(r"^band[\s_-]*\d+$", re.IGNORECASE)
    for model_name, data_name in zip(model_names, data_names):
        if generic.match(model_name) or generic.match(data_name):
            continue
        if model_name.lower() != data_name.lower():
            return (f"the model was trained on bands {', '.join(model_names)} but the data gives "
                    f"{', '.join(data_names)}: predictions may be wrong")
    return None


def check_band_count(loaded: LoadedModel, source: DatasetSource, bands: Sequence[int]) -> None:
    if loaded.num_bands != len(bands):
        what = f"bands {list(bands)}" if source.kind == NPY else f"band folders {', '.join(source.band_names)}"
        raise InputError(
            f"{loaded.name}: the model takes {loaded.num_bands} bands but {source.root} gives {len(bands)} ({what})"
        )


def output_name(sample: Sample) -> str:
    """File name of a tile's mask: the Band1 file name (band folders), ``<stem>.tif`` for npy slices."""
    return sample.name if sample.kind != NPY else f"{Path(sample.name).stem}.tif"


def reference_tiff(sample: Sample) -> str | None:
    """The input whose GeoTIFF tags the mask inherits (none for npy slices)."""
    return None if sample.kind == NPY else sample.image_paths[0]


def check_tile_has_data(sample: Sample, image: np.ndarray, bands: Sequence[int]) -> None:
    """A band without a single finite value is a broken file, not a scene (solution.py's rule too)."""
    for channel, any_finite in enumerate(np.isfinite(image).any(axis=(0, 1))):
        if not any_finite:
            path = sample.image_paths[0] if sample.kind == NPY else sample.image_paths[bands[channel]]
            raise InputError(f"{path}: no finite pixel values in band {bands[channel]} (all NaN/inf)")


@dataclass(frozen=True)
class TileData:
    sample: Sample
    image: np.ndarray  # float32 (H, W, C) raw bands
    label: np.ndarray | None  # uint8 0/1/255, or None without labels


def iter_chunks(samples: Sequence[Sample], bands: Sequence[int], chunk_size: int) -> Iterator[list[TileData]]:
    """Tiles read ``chunk_size`` at a time, so memory stays bounded however many tiles there are."""
    for start in range(0, len(samples), chunk_size):
        chunk = []
        for sample in samples[start : start + chunk_size]:
            image, label = read_sample(sample, bands)
            check_tile_has_data(sample, image, bands)
            chunk.append(TileData(sample, image, label))
        yield chunk


def predict_probabilities(
    forward: Forward,
    images: Sequence[np.ndarray],
    tta: bool = True,
    window: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
) -> list[np.ndarray]:
    """``solution.predict_tiles`` with the network's stride: float32 (H, W) or (H, W, K) per image.

    ``window``/``overlap``/``batch_size`` left at None take ``solution.py``'s defaults (their one definition).
    """
    solution = solution_module()
    return solution.predict_tiles(
        forward, images, tta=tta, window=solution.DEFAULT_WINDOW if window is None else window,
        overlap=solution.DEFAULT_OVERLAP if overlap is None else overlap,
        batch_size=solution.DEFAULT_BATCH_SIZE if batch_size is None else batch_size, multiple=OUTPUT_STRIDE,
    )


def check_output_folder(out: Path, source: DatasetSource) -> None:
    """Masks carry the Band1 file names: writing into an input folder would overwrite the input."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output folder is a file")
    if not out.is_dir():
        return
    folders = {os.path.dirname(path) for sample in source.samples for path in sample.image_paths}
    for folder in sorted(folders):
        if os.path.samefile(out, folder):
            raise InputError(f"{out}: output folder is an input folder; masks would overwrite the inputs")
    if source.kind == TIFF:  # a band-folder dataset's masks take the Band1 names, as solution.py writes them
        shared("check_no_other_tile_files", str(out), [os.path.basename(s.image_paths[0]) for s in source.samples])


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the folder ({type(exc).__name__}: {exc})") from exc


def bands_argument(text: str) -> tuple[int, ...]:
    """argparse ``type=`` for ``--bands``: the data layer's parser, with its message kept."""
    import argparse

    from keras_glacier.data.bands import parse_bands

    try:
        return parse_bands(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
