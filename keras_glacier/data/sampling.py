"""Which training crops an epoch draws, and how many: sampling decides the epoch, not the tile count.

An epoch of training is ``samples_per_epoch`` random crops. Tile ``i`` supplies a share of them
proportional to its area, so a large tile is cropped as often as the same area cut into small
tiles would be. The counts are drawn by residual sampling: tile ``i`` gets ``floor(N * p_i)``
crops, and the ``N - sum(floor)`` left over go to distinct tiles drawn with probability
proportional to the fractional parts. That keeps each tile's count within one of its expected
share (plain sampling with replacement would leave some tiles out of an epoch by chance); with
equally sized tiles and ``N`` equal to their number, every tile is cropped exactly once per epoch,
which is the epoch of the tile-count loader this replaces. The order is then shuffled. Everything
is a function of ``(seed, epoch)``, so a resumed run draws what the uninterrupted one would have.

Default epoch size (:func:`default_samples_per_epoch`), with ``n`` training tiles and ``c`` the
number of crops that tile the training area once (``sum ceil(h/crop) * ceil(w/crop)``)::

    N = max(n, MIN_STEPS * batch, min(c, MAX_COVER_STEPS * batch))

- never fewer crops than tiles: a dataset of many tiles (HKH: thousands of 512x512 slices) keeps
  the epoch it had, and with it the meaning of ``--epochs`` and ``--patience``;
- an epoch covers the training area about once, up to ``MAX_COVER_STEPS`` steps: a few large
  scenes (the Everest development set: 9 training tiles, 2 steps per epoch at ``--crop 128``,
  early stopping after ~54 optimiser steps with the model still learning) now get up to 64 steps
  per epoch, so patience, warm-up and the cosine schedule count in useful units. The cap keeps the
  default 40-epoch budget within a CPU run of minutes rather than hours on large scenes;
- at least ``MIN_STEPS`` steps, so a toy dataset still takes a few steps between validations
  (each validation pass costs about as much as several training steps). With ResNet-18 the floor
  is twice as many steps (:func:`min_steps`): its step costs two thirds of a ResNet-34 step
  (benchmarks/PERFORMANCE.md), so a small dataset's epoch gets twice the steps for about 1.3 times
  the time, which is how the small-data recipe was measured (benchmarks/RESULTS.md).

Small datasets, fewer training tiles than ``MIN_STEPS * batch`` (:func:`small_dataset`: everest-west's
9, GlacierHack phase 1's 25), are where the floor decides the epoch; ``--affine auto`` and
``--encoder auto`` give them free rotation and zoom (:func:`auto_affine`) and the ResNet-18 encoder
(:func:`auto_encoder`), both measured on everest-west (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from keras_glacier.constants import AFFINE_PROBABILITY, DEFAULT_ENCODER

#: Fewest optimiser steps in a default epoch with ResNet-34 (see :func:`min_steps` for ResNet-18).
MIN_STEPS = 8
#: The ResNet-18 floor, in multiples of MIN_STEPS (module docstring).
RESNET18_FLOOR_FACTOR = 2
#: Most steps a default epoch spends covering the training area once.
MAX_COVER_STEPS = 64


def tile_shape(sample) -> tuple[int, int]:
    """(height, width) of a sample's image, read from the file header only."""
    path = sample.image_paths[0]
    if str(path).endswith(".npy"):
        return tuple(int(s) for s in np.load(path, mmap_mode="r").shape[:2])
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tuple(int(s) for s in tif.pages[0].shape[:2])


def area_weights(shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Probability of drawing each tile: its area over the total area."""
    areas = np.array([h * w for h, w in shapes], dtype=np.float64)
    if not len(areas) or areas.min() <= 0:
        raise ValueError(f"tile shapes must have a positive area, got {list(shapes)[:3]}")
    return areas / areas.sum()


def covering_crops(shapes: Sequence[tuple[int, int]], crop: int | None) -> int:
    """Crops of ``crop`` x ``crop`` that tile every training tile once (a tile no larger is one crop)."""
    if crop is None:
        return len(shapes)
    return int(sum(math.ceil(h / crop) * math.ceil(w / crop) for h, w in shapes))


def min_steps(encoder: str = DEFAULT_ENCODER) -> int:
    """Fewest optimiser steps of a default epoch with ``encoder``: 8, or 16 with the lighter ResNet-18."""
    return MIN_STEPS * (RESNET18_FLOOR_FACTOR if encoder == "resnet18" else 1)


def default_samples_per_epoch(shapes: Sequence[tuple[int, int]], crop: int | None, batch_size: int,
                              encoder: str = DEFAULT_ENCODER) -> int:
    """The default epoch size, in crops (see the module docstring for the rule and its reasons)."""
    cover = min(covering_crops(shapes, crop), MAX_COVER_STEPS * batch_size)
    return max(len(shapes), min_steps(encoder) * batch_size, cover)


def small_dataset(num_tiles: int, batch_size: int) -> bool:
    """Fewer training tiles than the least number of crops a default epoch draws (``MIN_STEPS * batch``):
    every epoch then shows each tile several times."""
    return num_tiles < MIN_STEPS * batch_size


def auto_affine(num_tiles: int, batch_size: int) -> float:
    """``--affine auto``: the probability of a free rotation and zoom per crop, from the tile count.

    On for a :func:`small_dataset`, whose epochs show each tile several times while flips and quarter
    turns alone give only 8 views of it (everest-west's 9 tiles, GlacierHack's 25). Datasets with
    more tiles (the demo's ~50, HKH's thousands) keep the augmentation their figures were measured with.
    """
    return AFFINE_PROBABILITY if small_dataset(num_tiles, batch_size) else 0.0


def auto_encoder(num_tiles: int, batch_size: int) -> str:
    """``--encoder auto``: ResNet-18 for a :func:`small_dataset`, else ResNet-34.

    A small dataset's runs end underfitted (on everest-west the ResNet-34 runs end with a training MCC
    of 0.65-0.80 after 200-320 steps), so steps matter more there than capacity: ResNet-18 takes twice
    the steps for about 1.3 times the time (:func:`min_steps`), and on everest-west it raised the mean MCC of
    single runs from 0.567 to 0.574 and of two-seed ensembles from 0.581 to 0.606 (benchmarks/RESULTS.md).
    Larger datasets (the demo, HKH) keep the ResNet-34 their figures were measured with.
    """
    return "resnet18" if small_dataset(num_tiles, batch_size) else "resnet34"


def crops_per_tile(weights: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """How many of ``total`` crops each tile supplies: residual sampling of ``total * weights``."""
    expected = total * np.asarray(weights, dtype=np.float64)
    counts = np.floor(expected).astype(np.int64)
    left = int(total - counts.sum())
    if left > 0:
        residual = np.clip(expected - counts, 0.0, None)
        if np.count_nonzero(residual) >= left:
            extra = rng.choice(len(weights), size=left, replace=False, p=residual / residual.sum())
        else:  # rounding left fewer fractional parts than crops to place
            extra = rng.choice(len(weights), size=left, replace=True, p=weights)
        np.add.at(counts, extra, 1)
    return counts


def epoch_draws(weights: np.ndarray, total: int, seed: int, epoch: int) -> np.ndarray:
    """The tile index of each crop of ``epoch``, in training order (length ``total``)."""
    rng = np.random.default_rng([seed, epoch, 0x5A])
    counts = crops_per_tile(weights, total, rng)
    draws = np.repeat(np.arange(len(weights)), counts)
    return draws[rng.permutation(len(draws))]
