"""Area-proportional crop sampling: epoch sizes, counts per tile, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from keras_glacier.data.sampling import (
    MAX_COVER_STEPS,
    MIN_STEPS,
    area_weights,
    auto_affine,
    auto_encoder,
    covering_crops,
    crops_per_tile,
    default_samples_per_epoch,
    epoch_draws,
    min_steps,
)


def test_default_epoch_size():
    # Many small tiles (HKH-like): one crop per tile, as before sampling decided the epoch.
    assert default_samples_per_epoch([(512, 512)] * 1000, 512, 4) == 1000
    # A few large scenes: the training area covered once (9 tiles of 1024^2 at crop 128: 9 * 64 crops) ...
    assert covering_crops([(1024, 1024)] * 9, 128) == 576
    assert default_samples_per_epoch([(1024, 1024)] * 9, 256, 4) == 144
    # ... up to MAX_COVER_STEPS steps, and never under MIN_STEPS steps.
    assert default_samples_per_epoch([(1024, 1024)] * 9, 128, 4) == MAX_COVER_STEPS * 4
    assert default_samples_per_epoch([(64, 64)] * 3, 64, 2) == MIN_STEPS * 2
    assert covering_crops([(100, 40)], 64) == 2 and covering_crops([(100, 40)], None) == 1


def test_free_rotation_is_on_for_fewer_tiles_than_a_default_epoch_draws():
    from keras_glacier.constants import AFFINE_PROBABILITY

    assert AFFINE_PROBABILITY > 0
    assert auto_affine(9, 4) == AFFINE_PROBABILITY  # everest-west's 9 training tiles
    assert auto_affine(25, 4) == AFFINE_PROBABILITY  # GlacierHack phase 1
    assert auto_affine(MIN_STEPS * 4 - 1, 4) == AFFINE_PROBABILITY
    assert auto_affine(MIN_STEPS * 4, 4) == 0.0 and auto_affine(51, 4) == 0.0  # the demo's ~51: unchanged
    assert auto_affine(31, 2) == 0.0 and auto_affine(15, 2) == AFFINE_PROBABILITY  # the bound follows the batch


def test_resnet18_is_the_encoder_of_a_small_dataset_and_doubles_the_step_floor():
    assert auto_encoder(9, 4) == "resnet18" and auto_encoder(25, 4) == "resnet18"  # everest-west, GlacierHack
    assert auto_encoder(MIN_STEPS * 4 - 1, 4) == "resnet18"
    assert auto_encoder(MIN_STEPS * 4, 4) == "resnet34" and auto_encoder(1000, 4) == "resnet34"  # demo, HKH
    assert min_steps("resnet34") == MIN_STEPS and min_steps("resnet18") == 2 * MIN_STEPS
    assert default_samples_per_epoch([(160, 160)] * 9, 256, 4, "resnet18") == 2 * MIN_STEPS * 4
    assert default_samples_per_epoch([(160, 160)] * 9, 256, 4) == MIN_STEPS * 4
    # Large datasets draw one crop per tile whatever the encoder.
    assert default_samples_per_epoch([(512, 512)] * 1000, 512, 4, "resnet18") == 1000


def test_counts_follow_tile_area_within_one():
    shapes = [(100, 100), (200, 100), (300, 300), (10, 10)]
    weights = area_weights(shapes)
    rng = np.random.default_rng(0)
    for total in (1, 7, 50, 333):
        counts = crops_per_tile(weights, total, rng)
        assert counts.sum() == total
        assert np.all(np.abs(counts - total * weights) < 1)


def test_equal_tiles_are_each_drawn_once_per_epoch_when_the_epoch_is_the_tile_count():
    draws = epoch_draws(area_weights([(64, 64)] * 10), 10, seed=0, epoch=3)
    assert sorted(draws.tolist()) == list(range(10))


def test_draws_are_a_function_of_seed_and_epoch():
    weights = area_weights([(64, 64), (128, 128), (32, 64)])
    a = epoch_draws(weights, 40, seed=1, epoch=2)
    np.testing.assert_array_equal(a, epoch_draws(weights, 40, seed=1, epoch=2))
    assert not np.array_equal(a, epoch_draws(weights, 40, seed=1, epoch=3))
    assert not np.array_equal(a, epoch_draws(weights, 40, seed=2, epoch=2))
    assert np.all(np.abs(np.bincount(a, minlength=3) - 40 * weights) < 1)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="positive area"):
        area_weights([(0, 10)])
