"""``GlacierSequence``: the Keras ``PyDataset`` that feeds training and validation.

Batches are ``(x, y)``: ``x`` float32 (B, H, W, C) RAW band values (no-data pixels as they are in
the files, NaN or all-zero; the model's ``BandNormalization`` does the scaling, so training and
inference see the same input), ``y`` float32 (B, H, W, 1) with 1 glacier, 0 background and 255
(IGNORE_INDEX) for pixels outside the HKH region or without data.

Training epochs are drawn by ``sampling.py`` when ``samples_per_epoch`` is given: that many crops,
each tile supplying a share proportional to its area (so the epoch, and with it the schedule and
early stopping, follows the amount of data rather than the number of files). Without it an epoch
is one pass over the samples in a shuffled order, as validation and older callers expect.

Determinism: the sample order of an epoch and every random choice for a sample (crop position,
augmentation) derive from ``(seed, epoch, position in the epoch, sample index)`` only, never from thread timing or batch
composition, so a run can be repeated exactly. Keras calls ``on_epoch_end`` after each epoch,
which moves to the next epoch's order. Keras 3 also draws batches once before the first epoch
(to build the optimizer; the prefetched batches are thrown away) and then calls ``on_epoch_end``,
so on its own the dataset would start training at its epoch 1; the :class:`EpochSync` callback
sets the dataset's epoch to Keras' epoch number at the start of every epoch, which also makes a
resumed run (``initial_epoch``) draw what the uninterrupted run would have drawn.
Pass ``shuffle=False`` to ``model.fit``: this dataset shuffles itself, and Keras' own batch-order
shuffling would use Python's global RNG.

Worker threads, not processes: JAX is initialised by then and forking after that is unsafe; the
expensive parts (file reads, numpy, albumentations' OpenCV kernels) release the GIL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras  # keras_glacier/__init__ (imported first, as our parent package) chose the backend
import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.augment import AugmentConfig, Augmenter
from keras_glacier.data.bands import check_bands
from keras_glacier.data.cache import TileCache
from keras_glacier.data.errors import InputError
from keras_glacier.data.sampling import area_weights, epoch_draws, tile_shape
from keras_glacier.data.sources import Sample, Window, read_sample
from keras_glacier.data.stats import BandStats, as_band_stats


def crop_window(shape: tuple[int, int], crop: int, rng: np.random.Generator | None) -> Window:
    """A ``crop`` x ``crop`` window inside ``shape`` (smaller where the tile is): random, or centred without rng."""
    height, width = shape
    h, w = min(crop, height), min(crop, width)
    if rng is None:
        return (height - h) // 2, (width - w) // 2, h, w
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def pad_to(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a tile smaller than the crop: NaN image (no-data), IGNORE_INDEX label (no loss)."""
    pad = ((0, max(0, size - image.shape[0])), (0, max(0, size - image.shape[1])))
    if not any(p[1] for p in pad):
        return image, label
    image = np.pad(image, (*pad, (0, 0)), constant_values=np.nan)
    return image, np.pad(label, pad, constant_values=IGNORE_INDEX)


class GlacierSequence(keras.utils.PyDataset):
    """Batches of (raw bands, labels) from ``samples``; see the module docstring for the contract.

    Args:
        samples: labelled samples (``sources.discover(root).samples`` or one side of a split).
        stats: training statistics (``BandStats`` or its dict); augmentation works on their unit scale.
        bands: band indices to read (``DatasetSource.resolve_bands``).
        batch_size: samples per batch.
        crop: square crop size, or None for whole tiles (then all tiles of a batch must share a size).
        augment: ``AugmentConfig`` for training, None for validation.
        shuffle: new sample order every epoch (training).
        seed: base seed of the order, the crops and the augmentation.
        cache_dir: if given, the selected bands and labels of all samples are written there once
            (``cache.py``) and read from that compact memory-mapped copy afterwards.
        random_crop: random crop positions (default: when shuffling) instead of centred crops.
        drop_remainder: drop the last incomplete batch (default: when shuffling), so that every
            training step has one shape and the compiled step is not retraced; never drops the
            only batch.
        samples_per_epoch: with ``shuffle``, draw this many crops per epoch from the samples in
            proportion to their area (``sampling.py``) instead of one pass over the samples.
        workers, max_queue_size: Keras' prefetching (threads).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        stats: BandStats | dict,
        bands: Sequence[int],
        batch_size: int = 4,
        crop: int | None = None,
        augment: AugmentConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        random_crop: bool | None = None,
        drop_remainder: bool | None = None,
        samples_per_epoch: int | None = None,
        workers: int = 2,
        max_queue_size: int = 8,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if not samples:
            raise InputError("no samples to build batches from")
        if batch_size < 1 or (crop is not None and crop < 1):
            raise ValueError(f"batch_size ({batch_size}) and crop ({crop}) must be positive")
        unlabelled = [sample for sample in samples if sample.label_path is None]
        if unlabelled:
            raise InputError(f"{unlabelled[0].image_paths[0]}: no label file (training and validation need labels)")
        self.samples = list(samples)
        self.stats = as_band_stats(stats)
        self.bands = check_bands(bands)
        if len(self.bands) != self.stats.num_bands:
            raise InputError(f"{len(self.bands)} bands selected but the statistics describe {self.stats.num_bands}")
        self.batch_size = int(batch_size)
        self.crop = crop
        self.shuffle = shuffle
        self.seed = int(seed)
        self.random_crop = shuffle if random_crop is None else random_crop
        drop = shuffle if drop_remainder is None else drop_remainder
        if samples_per_epoch is not None and (not shuffle or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch ({samples_per_epoch}) needs shuffle=True and a positive count")
        self.cache = TileCache.open_or_build(cache_dir, self.samples, self.bands, self.stats) if cache_dir else None
        self.samples_per_epoch = samples_per_epoch
        self.weights = None
        if samples_per_epoch is not None:
            shapes = self.cache.shapes if self.cache is not None else [tile_shape(s) for s in self.samples]
            self.weights = area_weights(shapes)
        count = (len(self.samples) if samples_per_epoch is None else samples_per_epoch) / self.batch_size
        self._num_batches = max(1, math.floor(count)) if drop else math.ceil(count)
        self.augmenter = Augmenter(augment, self.stats) if augment is not None else None
        self._served = False  # a batch was produced since the epoch started
        self.set_epoch(0)

    def __len__(self) -> int:
        return self._num_batches

    @property
    def epoch(self) -> int:
        return self._epoch_state[0]

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order and random draws (e.g. when resuming a run)."""
        # One attribute holds both, so a worker thread never pairs one epoch's number with another's order.
        self._epoch_state = (int(epoch), self._epoch_order(int(epoch)))
        self._served = False

    def on_epoch_end(self) -> None:
        if self._served:
            self.set_epoch(self.epoch + 1)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.samples))
        if self.weights is not None:
            return epoch_draws(self.weights, self.samples_per_epoch, self.seed, epoch)
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self._num_batches:
            raise IndexError(f"batch {index} out of range ({self._num_batches} batches)")
        epoch, order = self._epoch_state
        self._served = True
        start = index * self.batch_size
        chosen = order[start : start + self.batch_size]
        draw = None if self.weights is None else range(start, start + len(chosen))
        pairs = [self.load(int(i), epoch, None if draw is None else draw[k]) for k, i in enumerate(chosen)]
        shapes = {image.shape for image, _ in pairs}
        if len(shapes) > 1:
            names = ", ".join(self.samples[int(i)].name for i in chosen)
            raise InputError(f"tiles of different sizes in one batch ({names}); set a crop size")
        x = np.stack([image for image, _ in pairs])
        y = np.stack([label for _, label in pairs])[..., None].astype(np.float32)
        return x, y

    def load(self, sample_index: int, epoch: int | None = None, draw: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """One sample as the batch sees it: (image float32 (h, w, C), label uint8 (h, w)).

        ``draw``: the crop's position in a sampled epoch, so that a tile drawn twice in one epoch
        gets two different crops and augmentations.
        """
        epoch = self.epoch if epoch is None else epoch
        key = [self.seed, epoch, sample_index] if draw is None else [self.seed, epoch, sample_index, draw]
        rng = np.random.default_rng(key)
        crop_rng = rng if self.random_crop else None
        if self.cache is not None:
            window = None
            if self.crop is not None:
                window = crop_window(self.cache.shapes[sample_index], self.crop, crop_rng)
            image, label = self.cache.read(sample_index, window)
        else:
            window = None if self.crop is None else (lambda shape: crop_window(shape, self.crop, crop_rng))
            image, label = read_sample(self.samples[sample_index], self.bands, window)
        if self.crop is not None:
            image, label = pad_to(image, label, self.crop)
        if self.augmenter is not None:
            image, label = self.augmenter(image, label, seed=int(rng.integers(2**31)))
        return image, label


class EpochSync(keras.callbacks.Callback):
    """Keeps the datasets' epoch equal to Keras' epoch number (see the module docstring)."""

    def __init__(self, *datasets: GlacierSequence) -> None:
        super().__init__()
        self.datasets = datasets

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)
