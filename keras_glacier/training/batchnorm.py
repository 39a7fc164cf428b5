"""BatchNorm statistics recomputed after training on the training tiles as inference sees them.

Why: during training every BatchNormalization layer keeps a running average of its batches' mean
and variance (momentum 0.9: mostly the last ten steps), and a batch is a few augmented crops (free
rotation and zoom, brightness/contrast, noise). At inference the network normalises whole,
untouched tiles with those statistics, which describe neither. After training, one pass over the
training tiles, whole and un-augmented, measures what each layer receives from them. Only the
statistics change; every learned weight stays. On everest-west rows never seen this raised 26 of 32
kept networks (10 of the 12 trained without validation, 10 of 12 refitted, 6 of 8 validated;
benchmarks/RESULTS.md has the figures).

How: the tiles go through the network in training mode (each layer then normalises with the
statistics of the batch, so what the next layer receives depends on them) with dropout switched off
and every BatchNormalization layer's momentum set to 0 (its moving statistics become the batch's).
With every tile in one batch these are exactly the statistics each layer sees at inference once the
layers before it use theirs; small batches are not: a layer normalised by the statistics of three or
four tiles passes on their quirks, and on everest-west batches of 3 tiles lost what one batch of 9
gained (0.513 and 0.537 against 0.517 without; scratch measurement over the kept networks). So the
batches are as large as :data:`BATCH_PIXELS` allows and of equal size; several batches are combined
as one set (the mean of their means, and the mean of their variances plus the variance of their
means), and at most :data:`MAX_TILES` tiles are measured.

One layer is different: the ASPP image-pool branch's BatchNorm sees one value per channel per tile
(the tile's average), so its statistics rest on as many values as there are tiles. A run on one large
tile would set its variance to 0, and every tile predicted afterwards would have its pooled features
multiplied by about 300 (1/sqrt(eps)): on everest-west's rows merged into one 480x480 tile a network
then called 1.5% of a 41%-glacier row glacier (MCC 0.03). A layer whose input gives fewer than
:data:`MIN_VALUES` values per channel keeps the statistics training gave it (running averages over
batches of crops) and is named.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from keras_glacier.training.config import BN_STATS_TILES

#: The most training tiles the statistics are measured on: a hundred whole tiles hold millions of pixels
#: per channel, so more changes the figures little, and large datasets (HKH) keep the pass short.
MAX_TILES = 128

#: Pixels (tiles x height x width) per batch of the pass: 16 tiles of 512 x 512, everest-west's 9
#: tiles of 160 x 160 in one batch. Training mode without gradients keeps a few activations of the batch
#: alive at a time: about 1-2 GB for ResNet-34 at this size.
BATCH_PIXELS = 4 * 2**20

#: The fewest values per channel a layer's statistics are recomputed from: everest-west's 9 tiles (the
#: figures in the module docstring) give its image-pool layer 9; two batches of crops' worth.
MIN_VALUES = 8


class Recomputed(NamedTuple):
    """What :func:`recompute_batchnorm_statistics` did: layers recomputed, and the names of those that kept
    their statistics (too few values per channel)."""

    updated: int
    kept: tuple[str, ...] = ()


def values_per_tile(layer) -> int | None:
    """Values per channel that one tile gives ``layer``: the product of its input's fixed spatial sizes (1
    after a global pooling), or None where they follow the tile's size (or the input is unknown)."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):  # not in a functional graph, or called more than once
        return None
    spatial = shape[1:-1]
    return math.prod(spatial) if spatial and all(isinstance(size, int) for size in spatial) else None


def statistics_tiles(tiles, seed: int, limit: int = MAX_TILES) -> list:
    """The training tiles to measure on: all of them, or ``limit`` of them drawn with ``seed``."""
    tiles = list(tiles)
    if len(tiles) <= limit:
        return tiles
    chosen = np.random.default_rng(seed).choice(len(tiles), size=limit, replace=False)
    return [tiles[i] for i in sorted(chosen)]


def statistics_batch_size(tiles: int, tile_pixels: int, budget: int = BATCH_PIXELS) -> int:
    """Tiles per batch: as many as ``budget`` pixels hold (at least one), spread evenly over the batches
    needed, so that no batch is a small remainder."""
    most = max(1, budget // max(1, tile_pixels))
    batches = math.ceil(tiles / most)
    return math.ceil(tiles / batches)


def batchnorm_layers(model) -> list:
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batchnorm_statistics(model, batches) -> Recomputed:
    """Set every BatchNormalization layer's moving mean and variance to those of ``batches``.

    ``batches``: a sequence of ``(images, ...)`` batches of whole tiles as the model takes them (raw
    band values for a GlacierDeepLab). Each batch is weighted by its pixel count. A layer whose input
    holds fewer than :data:`MIN_VALUES` values per channel over all the tiles (:func:`too_few_values`:
    the image-pool branch's, on fewer tiles) keeps its statistics and normalises with them during the
    pass, so that the layers after it are measured on what they receive at inference. Returns the
    layers updated (0 when the model has none) and those kept. The layers' momentum, trainability and the
    dropout rates are restored whatever happens, and nothing is assigned unless every batch went through.
    """
    import keras

    norms = batchnorm_layers(model)
    if not norms:
        return Recomputed(0)
    tiles = tile_count(batches)
    kept = [layer for layer in norms if too_few_values(layer, tiles)]
    measured = [layer for layer in norms if layer not in kept]
    dropouts = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in measured]
    trainable = [layer.trainable for layer in kept]
    rates = [layer.rate for layer in dropouts]
    sums = [[0.0, 0.0] for _ in measured]  # per layer: weighted sum of means, of (variance + mean^2)
    total = 0.0
    try:
        for layer in measured:
            layer.momentum = 0.0
        for layer in kept:  # normalises with its kept statistics, so the layers after it see what inference gives
            layer.trainable = False
        for layer in dropouts:
            layer.rate = 0.0
        measure = _batch_statistics(model, measured)
        for index in range(len(batches)):
            images = batches[index][0]
            weight = float(math.prod(images.shape[:-1]))
            for (mean, variance), acc in zip(measure(images), sums):
                mean = np.asarray(mean, dtype=np.float64)
                acc[0] = acc[0] + weight * mean
                acc[1] = acc[1] + weight * (np.asarray(variance, dtype=np.float64) + mean**2)
            total += weight
    finally:
        for layer, momentum in zip(measured, momenta):
            layer.momentum = momentum
        for layer, flag in zip(kept, trainable):
            layer.trainable = flag
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    if total == 0:
        return Recomputed(0)
    for layer, (mean_sum, square_sum) in zip(measured, sums):
        mean = mean_sum / total
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(np.maximum(square_sum / total - mean**2, 0.0).astype(layer.moving_variance.dtype))
    return Recomputed(len(measured), tuple(layer.name for layer in kept))


def too_few_values(layer, tiles: int) -> bool:
    """Whether ``tiles`` tiles give ``layer`` fewer than :data:`MIN_VALUES` values per channel."""
    per_tile = values_per_tile(layer)
    return per_tile is not None and per_tile * tiles < MIN_VALUES


def tile_count(batches) -> int:
    """How many tiles ``batches`` holds: a GlacierSequence's samples, or the sum of a list's batch sizes."""
    samples = getattr(batches, "samples", None)
    if samples is not None:
        return len(samples)
    return sum(int(batch[0].shape[0]) for batch in batches)


def _batch_statistics(model, norms):
    """``images -> [(mean, variance) of each layer in norms]`` for one batch in training mode (momentum 0,
    set by the caller), leaving the model's variables untouched: one compiled JAX call (training runs on
    JAX only). Running the layers one by one would compile every operation on its own, which takes
    several times as long (benchmarks/PERFORMANCE.md)."""
    import jax

    where = {id(variable): i for i, variable in enumerate(model.non_trainable_variables)}
    slots = [(where[id(layer.moving_mean)], where[id(layer.moving_variance)]) for layer in norms]
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    step = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True)[1])

    def compiled(images):
        updated = step(trainable, non_trainable, images)
        return [(updated[m], updated[v]) for m, v in slots]

    return compiled


def recompute_for_run(config, run_dir, model, tiles, stats, bands) -> None:
    """``--bn-stats tiles``: recompute ``model``'s statistics on the run's training ``tiles`` (every process
    calls it; under a distribution process 0 measures and the others take its figures) and say so."""
    import time

    from keras_glacier.training import parallel
    from keras_glacier.training.data import effective_crop, statistics_sequence, tile_shapes

    if config.bn_stats != BN_STATS_TILES:
        return
    start = time.perf_counter()
    tiles = statistics_tiles(tiles, config.seed)
    shapes = tile_shapes(tiles)
    crop = effective_crop(None, shapes)  # the side every tile is padded to where they differ
    batch = statistics_batch_size(len(tiles), crop * crop if crop else math.prod(shapes[0]))
    sequence = statistics_sequence(config, run_dir, tiles, stats, bands, batch)
    done = parallel.update_from_chief(model, lambda local: recompute_batchnorm_statistics(local, sequence))
    if parallel.is_chief() and done and done.updated:
        count = len(sequence.samples)
        tiles = f"{count} training tile{'' if count == 1 else 's'}"
        kept = (f"; {', '.join(done.kept)} kept the training batches' statistics (one value per tile: {tiles} "
                f"{'is' if count == 1 else 'are'} too few to measure)" if done.kept else "")
        print(f"BatchNorm statistics of {done.updated} layers recomputed on {tiles}, whole and un-augmented "
              f"({time.perf_counter() - start:.1f} s; --bn-stats running keeps the training batches' running "
              f"averages){kept}", flush=True)


__all__ = ["BATCH_PIXELS", "MAX_TILES", "MIN_VALUES", "Recomputed", "batchnorm_layers",
           "recompute_batchnorm_statistics", "recompute_for_run", "statistics_batch_size", "statistics_tiles",
           "tile_count", "too_few_values", "values_per_tile"]
