"""``GlacierEnsemble``: the members' mean probability as one Keras model, its configuration and its file."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import keras
import numpy as np
import pytest

from convert.parity import randomize_weights
from keras_glacier.model import GlacierDeepLab, GlacierEnsemble
from tests.model.harness import assert_config_round_trip, save_and_load

BANDS = ["B2", "B3", "B4"]
STATS = {"lo": [0.0, 0.0, 0.0], "hi": [255.0, 255.0, 255.0], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
MULTICLASS = dict(task="multiclass", class_names=["background", "glacier", "debris"], class_values=[0, 85, 170])


def members(count=2, **config):
    """ResNet-18 members with different random weights and thresholds, as runs of different seeds are."""
    nets = []
    for i in range(count):
        net = GlacierDeepLab(num_bands=3, band_names=BANDS, encoder="resnet18", stats=STATS,
                             threshold=0.3 + 0.2 * i, **config)
        randomize_weights(net, seed=20 + i, logit_scale=4.0)
        nets.append(net)
    return nets


@pytest.fixture(scope="module")
def binary():
    return members()


def batch(seed=0, size=32):
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("float32")


def test_binary_output_is_the_logit_of_the_members_mean_probability(binary):
    ensemble = GlacierEnsemble(binary)
    x = batch()
    expected = np.mean([keras.ops.convert_to_numpy(keras.ops.sigmoid(m(x))) for m in binary], axis=0)
    got = keras.ops.convert_to_numpy(keras.ops.sigmoid(ensemble(x)))
    assert got.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.std(expected) > 0.05, "the members must give spread probabilities for this to test anything"
    assert ensemble.threshold == pytest.approx(0.4)  # no threshold given: the members' mean
    assert GlacierEnsemble(binary, threshold=0.55).threshold == 0.55
    assert [m.name for m in ensemble.members] == ["member_1", "member_2"]


def test_multiclass_output_gives_the_members_mean_class_probabilities():
    nets = members(**MULTICLASS)
    ensemble = GlacierEnsemble(nets)
    x = batch(1)
    expected = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(m(x), axis=-1)) for m in nets], axis=0)
    got = keras.ops.convert_to_numpy(keras.ops.softmax(ensemble(x), axis=-1))
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_config_says_what_the_members_are_and_round_trips(binary):
    ensemble = GlacierEnsemble(binary, threshold=0.45)
    config = ensemble.get_config()
    assert config["band_names"] == BANDS and config["task"] == "binary" and config["encoder"] == "resnet18"
    assert config["threshold"] == 0.45 and len(config["members"]) == 2
    assert config["stats"]["hi"] == STATS["hi"]
    clone = assert_config_round_trip(ensemble, batch(2))
    assert clone.threshold == 0.45


def test_saved_and_loaded_ensemble_computes_the_same(binary, tmp_path):
    ensemble = GlacierEnsemble(binary, threshold=0.45)
    x = batch(3)
    loaded = save_and_load(ensemble, tmp_path / "ensemble.keras")
    assert type(loaded) is GlacierEnsemble and loaded.threshold == 0.45
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(ensemble(x)))


@pytest.mark.parametrize("change, message", [
    ({"band_names": ["B1", "B2", "B3"]}, "band_names"),
    (MULTICLASS, "task"),
])
def test_members_that_mean_different_things_are_refused(binary, change, message):
    other = GlacierDeepLab(**{**dict(num_bands=3, band_names=BANDS, encoder="resnet18", stats=STATS), **change})
    with pytest.raises(ValueError, match=message):
        GlacierEnsemble([binary[0], other])


def test_other_models_and_bad_thresholds_are_refused(binary):
    with pytest.raises(ValueError, match="GlacierDeepLab"):
        GlacierEnsemble([binary[0], keras.Sequential([keras.layers.Dense(1)])])
    with pytest.raises(ValueError, match="at least one member"):
        GlacierEnsemble([])
    with pytest.raises(ValueError, match="threshold"):
        GlacierEnsemble(binary, threshold=1.0)
