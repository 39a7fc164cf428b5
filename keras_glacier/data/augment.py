"""Training augmentation with albumentations, without letting it clip raw band values.

albumentations 2.x clips float images to [0, 1] in its pixel-level transforms
(``RandomBrightnessContrast``, ``GaussNoise``), which silently destroys raw band values (reflectance
x 10000, kelvin, ...). So the work is split:

* spatial transforms (flips, 90-degree rotations, and a random rotation by any angle with a random
  zoom) run on the raw image together with the label: they only move pixels, never change or clip a
  value (the free rotation samples its nearest neighbour and reflects at the border rather than
  interpolating or filling), and NaN no-data pixels travel with their label;
* pixel-level transforms run on the unit scale ``u = clip((x - lo) / (hi - lo), 0, 1)`` of
  ``stats.py``, where [0, 1] is exactly the range the model sees (its normalisation clips to it
  too, so albumentations' clipping of the result changes nothing the model could see), and the
  result is mapped back to raw values. Brightness/contrast limits and the noise standard deviation
  are therefore fractions of each band's ``hi - lo``. No-data pixels keep their original values
  (NaN stays NaN, all-zero stays all-zero) so they stay recognisable; when no pixel-level transform
  fires, the raw values are returned untouched (values beyond ``lo``/``hi`` included).

The output keeps dtype float32 and the band count. Validation uses no augmentation at all.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_glacier.data.bands import nodata_mask
from keras_glacier.data.stats import BandStats, as_band_stats, from_unit, to_unit

if TYPE_CHECKING:
    import albumentations


def _albumentations() -> Any:
    """Import albumentations on first use.

    Importing it costs a second and pulls in torch (its ``albumentations.pytorch`` subpackage),
    which the data layer otherwise never needs, and it checks PyPI for a newer version on import
    (a network request and a warning on an offline machine) unless NO_ALBUMENTATIONS_UPDATE is set.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and limits of the training augmentation (0 disables a transform)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.1  # additive, as a fraction of hi - lo
    contrast_limit: float = 0.1  # multiplicative: gain in 1 +- limit
    noise: float = 0.25
    noise_std: tuple[float, float] = (0.005, 0.02)  # fraction of hi - lo
    affine: float = 0.0  # probability of a free rotation and zoom (more views of a few real tiles)
    rotate_limit: float = 45.0  # degrees either way; rotate90 supplies the quarter turns
    scale_limit: float = 0.25  # zoom factor drawn from [1 - limit, 1 / (1 - limit)]

    def spatial(self, square: bool = True) -> albumentations.Compose | None:
        """Flips, (for square images only, which keep their shape) 90-degree rotations, free rotation and zoom."""
        A = _albumentations()
        transforms = [
            transform
            for transform, p in (
                (A.HorizontalFlip(p=self.hflip), self.hflip),
                (A.VerticalFlip(p=self.vflip), self.vflip),
                (A.RandomRotate90(p=self.rotate90), self.rotate90 if square else 0.0),
            )
            if p > 0
        ]
        if self.affine > 0:
            import cv2  # albumentations' own dependency

            transforms.append(A.Affine(
                scale=(1 - self.scale_limit, 1 / (1 - self.scale_limit)), keep_ratio=True,
                rotate=(-self.rotate_limit, self.rotate_limit), interpolation=cv2.INTER_NEAREST,
                mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101, p=self.affine,
            ))
        return A.Compose(transforms) if transforms else None

    def pixel(self) -> albumentations.Compose | None:
        """Brightness/contrast and Gaussian noise, meant for the unit scale (see the module docstring)."""
        A = _albumentations()
        transforms = []
        if self.brightness_contrast > 0:
            transforms.append(
                A.RandomBrightnessContrast(
                    brightness_limit=self.brightness_limit,
                    contrast_limit=self.contrast_limit,
                    brightness_by_max=True,
                    p=self.brightness_contrast,
                )
            )
        if self.noise > 0:
            transforms.append(A.GaussNoise(std_range=tuple(self.noise_std), mean_range=(0.0, 0.0), p=self.noise))
        return A.Compose(transforms, save_applied_params=True) if transforms else None


def _reseed(compose: albumentations.Compose, seed: int) -> None:
    """Give all transforms of ``compose`` ONE shared random stream seeded by ``seed``.

    ``Compose.set_random_seed`` (and ``Compose(seed=...)``) hands every transform its own copy of
    the same seeded generator, so the transforms draw identical numbers: HorizontalFlip and
    VerticalFlip with equal p then always fire together and half the flips/rotations never occur.
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


class Augmenter:
    """Seeded augmentation of one (raw image, label) pair; safe to call from several threads.

    albumentations keeps its random state on the Compose objects, so each thread gets its own
    pair of Compose objects and reseeds them per call: the result depends only on ``seed``.
    """

    def __init__(self, config: AugmentConfig, stats: BandStats | dict) -> None:
        self.config = config
        self.stats = as_band_stats(stats)
        self._local = threading.local()

    def _pipelines(self, square: bool) -> tuple[albumentations.Compose | None, albumentations.Compose | None]:
        if not hasattr(self._local, "pipelines"):
            self._local.pipelines = {}
        if square not in self._local.pipelines:
            self._local.pipelines[square] = (self.config.spatial(square), self.config.pixel())
        return self._local.pipelines[square]

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if image.shape[-1] != self.stats.num_bands:
            raise ValueError(f"image has {image.shape[-1]} bands, the statistics {self.stats.num_bands}")
        spatial, pixel = self._pipelines(square=image.shape[0] == image.shape[1])
        image = np.asarray(image, dtype=np.float32)
        if spatial is not None:
            _reseed(spatial, seed)
            out = spatial(image=image, mask=label) if label is not None else spatial(image=image)
            image, label = out["image"], out.get("mask", label)
        if pixel is not None:
            _reseed(pixel, seed + 1)
            out = pixel(image=to_unit(image, self.stats))
            if out["applied_transforms"]:
                nodata = nodata_mask(image)
                augmented = from_unit(out["image"], self.stats)
                augmented[nodata] = image[nodata]
                image = augmented
        return np.ascontiguousarray(image, dtype=np.float32), label
