"""``Segmenter``: a trained model ready to predict, loaded from a run folder (keras-hub's ``from_preset`` shape).

    seg = keras_glacier.Segmenter.from_run("runs/demo")      # or a .keras file
    probs = seg.predict(images)                               # (N, H, W) glacier probabilities, TTA on
    masks = seg.predict(images, return_labels=True)           # (N, H, W) uint8 0/1 at seg.threshold

Built on ``keras_glacier.inference`` (load the run, the Keras forward) and ``solution.py``'s tiling
and flip TTA (through ``inference.predict_probabilities``), so its probabilities are the ones
``python -m keras_glacier.predict`` and ``evaluate`` use. ``images`` are raw band values, as stored,
in the run's band order: the model normalises them itself.

:func:`convert_model` writes the competition's ``model.pth`` from a run folder, a ``.keras`` file,
a ``Segmenter`` or a ``keras.Model`` (``convert.convert_model`` with its verification).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_glacier.errors import InputError


class Segmenter:
    """A Keras glacier model with the facts of its run (bands, threshold) and a tiled, TTA ``predict``."""

    def __init__(self, loaded, run_facts: dict | None = None) -> None:
        self.loaded = loaded  # keras_glacier.inference.LoadedModel
        self.facts = dict(run_facts or {})
        self._forward = None

    @classmethod
    def from_run(cls, source: str | os.PathLike) -> Segmenter:
        """Load a run folder (its ``model.keras`` and ``run.json``) or a ``.keras`` file."""
        from keras_glacier.inference import load_run

        loaded = load_run(source)
        facts = {}
        run_json = None if loaded.path is None else loaded.path.parent / "run.json"
        if run_json is not None and run_json.is_file():
            try:
                facts = json.loads(run_json.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{run_json}: cannot read ({type(exc).__name__}: {exc})") from None
        return cls(loaded, facts)

    from_preset = from_run  # the keras-hub name

    @property
    def model(self):
        return self.loaded.model

    @property
    def num_bands(self) -> int:
        return self.loaded.num_bands

    @property
    def bands(self) -> list[int] | None:
        """Channels of the 15-channel slices the run trained on (None when unknown)."""
        return self.facts.get("bands_used")

    @property
    def threshold(self) -> float:
        """The decision threshold: the model's own, else the run's chosen one, else 0.5."""
        value = getattr(self.model, "threshold", None)
        if value is None:
            value = self.facts.get("threshold", 0.5)
        return float(value)

    def predict(self, images: np.ndarray | Sequence[np.ndarray], tta: bool = True, return_labels: bool = False,
                window: int | None = None, overlap: int | None = None, batch_size: int | None = None):
        """Glacier probabilities (N, H, W) of raw band images (N, H, W, bands), or labels with ``return_labels``.

        A multi-class model gives class probabilities (N, H, W, K), and class indices as labels.

        Tiles of any size are cut into overlapping windows (``solution.py``'s defaults); ``tta``
        averages the four flips. A list of differently sized images gives a list of maps.
        """
        from keras_glacier.inference import keras_forward, predict_probabilities
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        for image in batch:
            if np.ndim(image) != 3 or np.shape(image)[-1] != self.num_bands:
                raise InputError(f"images must be (H, W, {self.num_bands}) raw bands, got shape {np.shape(image)}")
        if self._forward is None:
            self._forward = keras_forward(self.model)
        maps = predict_probabilities(self._forward, [np.asarray(i, np.float32) for i in batch], tta, window,
                                     overlap, batch_size)
        if return_labels:  # binary: glacier above the threshold; multi-class: the most probable class index
            maps = [(m > self.threshold).astype(np.uint8) if m.ndim == 2 else m.argmax(-1).astype(np.uint8)
                    for m in maps]
        if single:
            return maps[0]
        if len({m.shape for m in maps}) == 1:
            return np.stack(maps)
        return maps

    def __repr__(self) -> str:
        return f"Segmenter({self.loaded.name}, {self.num_bands} bands, threshold {self.threshold:.3f})"


def convert_model(run_or_model, out: str | os.PathLike | None = None, half: bool = False, verify: bool = True):
    """Write the competition's ``model.pth`` (default: next to the run's ``model.keras``); returns the report."""
    from convert import convert_model as export

    source = run_or_model.model if isinstance(run_or_model, Segmenter) else run_or_model
    if out is None:
        if not isinstance(source, (str, os.PathLike)):
            raise InputError("convert_model: give out= (the model.pth to write) for a model in memory")
        path = Path(source)
        out = (path if path.is_dir() else path.parent) / "model.pth"
    return export(source, out, half=half, verify=verify)


__all__ = ["Segmenter", "convert_model"]
