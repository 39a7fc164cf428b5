"""``--bn-stats tiles``: BatchNorm statistics recomputed on whole training tiles after training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_glacier.training.batchnorm import (
    BATCH_PIXELS,
    MAX_TILES,
    MIN_VALUES,
    batchnorm_layers,
    recompute_batchnorm_statistics,
    statistics_batch_size,
    statistics_tiles,
    values_per_tile,
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
    assert recompute_batchnorm_statistics(model, data) == (2, ())
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
    assert recompute_batchnorm_statistics(model, batches(2)).updated == 0


def pooled_network(seed: int = 0):
    """conv -> BN -> global average -> conv -> BN ("pool_bn", one value per channel per tile) -> broadcast
    back and added -> conv -> BN ("after"): the image-pool branch of the ASPP in small."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    pooled = keras.layers.Conv2D(4, 1, name="pool_conv")(pooled)
    pooled = keras.layers.BatchNormalization(momentum=0.9, name="pool_bn")(pooled)
    x = keras.layers.Add()([x, pooled])  # (n, 1, 1, 4) broadcast over the map
    x = keras.layers.Conv2D(2, 1, name="conv2")(x)
    outputs = keras.layers.BatchNormalization(momentum=0.9, name="after")(x)
    return keras.Model(inputs, outputs)


def with_training_statistics(model):
    """Moving statistics as training leaves them: not the initial 0 / 1, so that kept and recomputed differ."""
    rng = np.random.default_rng(7)
    for layer in batchnorm_layers(model):
        layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))
    return model


def test_the_image_pool_layer_gives_one_value_per_tile_the_others_follow_the_tile():
    model = pooled_network()
    assert {layer.name: values_per_tile(layer) for layer in batchnorm_layers(model)} == {
        "bn1": None, "pool_bn": 1, "after": None}


def test_the_deeplab_image_pool_branch_is_the_only_layer_with_one_value_per_tile():
    from keras_glacier.model import GlacierDeepLab

    stats = {"lo": [0.0] * 3, "hi": [255.0] * 3, "mean": [0.5] * 3, "std": [0.2] * 3}
    model = GlacierDeepLab(num_bands=3, band_names=["B2", "B3", "B4"], encoder="resnet18", stats=stats)
    assert [layer.name for layer in batchnorm_layers(model) if values_per_tile(layer) is not None] == ["aspp.pool.bn"]
    assert values_per_tile(model.get_layer("aspp.pool.bn")) == 1


def test_one_tile_keeps_the_image_pool_statistics_and_measures_the_rest_as_inference_runs():
    """One tile would give the image-pool layer a variance of 0 (its pooled features then multiplied by
    1/sqrt(eps) at inference): it keeps its statistics, and the layer after it is measured with them."""
    model = with_training_statistics(pooled_network())
    kept = moving(model.get_layer("pool_bn"))
    (x,) = batches(1)[0]
    done = recompute_batchnorm_statistics(model, [(x,)])
    assert done == (2, ("pool_bn",))
    np.testing.assert_array_equal(moving(model.get_layer("pool_bn"))[0], kept[0])
    np.testing.assert_array_equal(moving(model.get_layer("pool_bn"))[1], kept[1])
    assert model.get_layer("pool_bn").trainable, "the kept layer is trainable again"
    model.get_layer("pool_bn").trainable = False  # a frozen layer stays frozen
    assert recompute_batchnorm_statistics(model, [(x,)]).kept == ("pool_bn",)
    assert not model.get_layer("pool_bn").trainable
    model.get_layer("pool_bn").trainable = True
    before_after = keras.Model(model.input, model.get_layer("conv2").output)
    features = np.asarray(before_after(x, training=False)).reshape(-1, 2).astype(np.float64)
    mean, variance = moving(model.get_layer("after"))
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, features.var(0), rtol=1e-4, atol=1e-5)


def test_enough_tiles_recompute_the_image_pool_statistics_over_the_tiles_averages():
    model = with_training_statistics(pooled_network())
    data = batches(MIN_VALUES)  # one batch: each layer then gets exactly what it receives at inference
    assert recompute_batchnorm_statistics(model, data) == (3, ())
    branch = keras.Model(model.input, model.get_layer("pool_conv").output)
    pooled = np.concatenate([np.asarray(branch(x, training=False)) for (x,) in data]).reshape(-1, 4)
    assert len(pooled) == MIN_VALUES
    mean, variance = moving(model.get_layer("pool_bn"))
    np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, pooled.var(0), rtol=1e-4, atol=1e-5)


def test_fewer_tiles_than_min_values_keep_the_image_pool_statistics_from_a_sequence():
    """The tile count comes from a sequence's samples as from a list's batches."""
    class Sequence(list):
        samples = list(range(MIN_VALUES - 1))

    model = with_training_statistics(pooled_network())
    kept = moving(model.get_layer("pool_bn"))
    assert recompute_batchnorm_statistics(model, Sequence(batches(3, 4))).kept == ("pool_bn",)
    np.testing.assert_array_equal(moving(model.get_layer("pool_bn"))[1], kept[1])


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


def test_a_batch_of_one_crop_is_refused_naming_the_flag():
    """Training's batches give the image-pool BatchNorm one value per crop: a batch of 1 has no variance."""
    from keras_glacier.errors import UsageError

    with pytest.raises(UsageError, match="--batch-size must be at least 2"):
        TrainConfig(batch_size=1)
    assert TrainConfig(batch_size=2).batch_size == 2


def test_the_run_says_which_layer_kept_its_statistics(monkeypatch, capsys):
    """recompute_for_run's line names the kept layer and why; with enough tiles it names none."""
    import keras_glacier.data.sampling as sampling
    import keras_glacier.training.data as training_data
    from keras_glacier.training.batchnorm import recompute_for_run

    class Tiles(list):
        samples = ()

    def sequence(config, run_dir, tiles, stats, bands, batch):
        data = Tiles(batches(len(tiles)))
        data.samples = list(tiles)
        return data

    monkeypatch.setattr(training_data, "statistics_sequence", sequence)
    monkeypatch.setattr(sampling, "tile_shape", lambda tile: (8, 8))
    for tiles, named in ((["t0", "t1"], True), ([f"t{i}" for i in range(MIN_VALUES)], False)):
        recompute_for_run(TrainConfig(), None, pooled_network(), tiles, None, None)
        line = capsys.readouterr().out
        assert line.startswith(f"BatchNorm statistics of {2 if named else 3} layers recomputed on {len(tiles)} ")
        kept = "pool_bn kept the training batches' statistics (one value per tile: 2 training tiles are too few"
        assert (kept in line) is named, line
