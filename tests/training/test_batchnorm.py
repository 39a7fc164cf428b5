"""``--bn-stats tiles``: BatchNorm statistics recomputed on whole training tiles after training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_glacier.training.batchnorm import (
    BATCH_PIXELS,
    MAX_TILES,
    batchnorm_layers,
    recompute_batchnorm_statistics,
    statistics_batch_size,
    statistics_tiles,
)
from keras_glacier.training.config import TrainConfig


def small_network(seed: int = 0):
    """conv -> BN -> relu -> dropout -> conv -> BN: the second BN's input depends on the first's statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(2, 1, name="conv2")(x)
    outputs = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    return keras.Model(inputs, outputs)


def batches(*sizes, seed=1, shift=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(shift, 1.0 + i, (n, 8, 8, 3)).astype("float32"),) for i, n in enumerate(sizes)]


def moving(layer):
    return np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)


def test_the_first_layer_gets_the_mean_and_variance_of_every_pixel_of_every_batch():
    model = small_network()
    data = batches(3, 3, shift=2.0)
    assert recompute_batchnorm_statistics(model, data) == 2
    conv = keras.Model(model.input, model.get_layer("conv1").output)
    features = np.concatenate([np.asarray(conv(x)) for (x,) in data]).reshape(-1, 4).astype(np.float64)
    mean, variance = moving(model.get_layer("bn1"))
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, features.var(0), rtol=1e-4, atol=1e-6)  # of the whole set, not per batch
    assert not np.allclose(variance, np.mean([np.asarray(conv(x)).reshape(-1, 4).var(0) for (x,) in data], 0),
                           rtol=1e-3), "the batches differ, so the mean of their variances is not the set's"


def test_one_batch_gives_each_layer_what_it_receives_at_inference():
    """With every tile in one batch, the second layer's statistics are those of its input when the first
    layer normalises with its new statistics, as at inference."""
    model = small_network()
    (x,) = batches(6)[0]
    recompute_batchnorm_statistics(model, [(x,)])
    before_bn2 = keras.Model(model.input, model.get_layer("conv2").output)
    features = np.asarray(before_bn2(x, training=False)).reshape(-1, 2).astype(np.float64)
    mean, variance = moving(model.get_layer("bn2"))
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, features.var(0), rtol=1e-4, atol=1e-5)
    # A fixed point: measuring again changes nothing.
    again = [moving(layer) for layer in batchnorm_layers(model)]
    recompute_batchnorm_statistics(model, [(x,)])
    for layer, (m, v) in zip(batchnorm_layers(model), again):
        np.testing.assert_allclose(moving(layer)[0], m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(moving(layer)[1], v, rtol=1e-5, atol=1e-6)


def test_only_the_statistics_change_and_the_layers_settings_come_back():
    model = small_network()
    learned = [np.asarray(w) for w in model.trainable_weights]
    recompute_batchnorm_statistics(model, batches(2, 2))
    for before, after in zip(learned, model.trainable_weights):
        np.testing.assert_array_equal(before, np.asarray(after))
    assert [layer.momentum for layer in batchnorm_layers(model)] == [0.9, 0.9]
    assert model.get_layer("drop").rate == 0.5


def test_a_failing_batch_leaves_the_statistics_as_they_were():
    model = small_network()
    kept = [moving(layer) for layer in batchnorm_layers(model)]
    bad = batches(2)[0][0][..., :2]  # two channels where the network takes three
    with pytest.raises(ValueError):
        recompute_batchnorm_statistics(model, [*batches(2), (bad,)])
    for layer, (mean, variance) in zip(batchnorm_layers(model), kept):
        np.testing.assert_array_equal(moving(layer)[0], mean)
        np.testing.assert_array_equal(moving(layer)[1], variance)
    assert [layer.momentum for layer in batchnorm_layers(model)] == [0.9, 0.9]
    assert model.get_layer("drop").rate == 0.5


def test_a_network_without_batchnorm_is_left_alone():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    assert recompute_batchnorm_statistics(model, batches(2)) == 0


@pytest.mark.parametrize("tiles, size, expected", [
    (9, 160, 9),       # everest-west: one batch
    (20, 512, 10),     # 16 fit: two even batches, not 16 + 4
    (32, 512, 16),
    (3, 4096, 1),      # larger than the budget: one tile at a time
])
def test_batches_are_as_large_as_the_budget_allows_and_even(tiles, size, expected):
    assert statistics_batch_size(tiles, size * size) == expected
    assert expected * size * size <= max(BATCH_PIXELS, size * size)


def test_at_most_max_tiles_are_measured_drawn_with_the_seed():
    tiles = [f"tile{i:03d}" for i in range(300)]
    chosen = statistics_tiles(tiles, seed=3)
    assert len(chosen) == MAX_TILES == len(set(chosen)) and chosen == sorted(chosen)
    assert chosen == statistics_tiles(tiles, seed=3) and chosen != statistics_tiles(tiles, seed=4)
    assert statistics_tiles(tiles[:9], seed=3) == tiles[:9]


def test_the_setting_defaults_to_tiles_and_older_runs_keep_the_running_averages():
    assert TrainConfig().bn_stats == "tiles"
    assert TrainConfig.from_dict({"epochs": 3}).bn_stats == "running"  # config.json from before the setting
    assert TrainConfig.from_dict(TrainConfig(bn_stats="running").to_dict()).bn_stats == "running"


def test_a_wrong_setting_names_the_flag():
    from keras_glacier.errors import UsageError

    with pytest.raises(UsageError, match="--bn-stats"):
        TrainConfig(bn_stats="batches")
