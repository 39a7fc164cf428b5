"""The Keras network: shapes, names (the conversion contract), configuration, serialisation, precision."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import keras
import numpy as np
import pytest

from keras_glacier.losses import BceDiceLoss
from keras_glacier.metrics import SCORE_NAMES, segmentation_metrics
from keras_glacier.model import (
    CONFIG_KEYS,
    BandNormalization,
    FastConv2D,
    FastDepthwiseConv2D,
    GlacierDeepLab,
    build_deeplab,
    build_resnet_backbone,
)
from tests.model.harness import assert_config_round_trip, assert_save_load, save_and_load

STATS = {
    "lo": [100.0, 200.0, 50.0, 0.0, 10.0],
    "hi": [3000.0, 2500.0, 4000.0, 1.0, 60.0],
    "mean": [0.3, 0.4, 0.5, 0.2, 0.6],
    "std": [0.1, 0.2, 0.25, 0.3, 0.15],
    "bands": [1, 2, 3, 5, 9],  # metadata the model must ignore
}


#: BasicBlocks of layer1..layer4 in torchvision's ResNet-18 and ResNet-34 (written out, not imported).
TORCHVISION_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def expected_torch_paths(encoder: str = "resnet34") -> list[str]:
    """Every weighted module path of the PyTorch twin, written out from the README's architecture diagram."""
    paths = ["normalize", "backbone.conv1", "backbone.bn1"]
    # (stage, blocks, block 0 has a downsample) of torchvision's ResNet
    for stage, blocks, downsample in zip(("layer1", "layer2", "layer3", "layer4"), TORCHVISION_BLOCKS[encoder],
                                         (False, True, True, True)):
        for k in range(blocks):
            prefix = f"backbone.{stage}.{k}"
            paths += [f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.conv2", f"{prefix}.bn2"]
            if k == 0 and downsample:
                paths += [f"{prefix}.downsample.0", f"{prefix}.downsample.1"]
    for branch in ("b0", "b1", "b2", "b3", "pool"):
        cbam = f"aspp.{branch}.cbam"
        paths += [f"aspp.{branch}.conv", f"aspp.{branch}.bn", f"{cbam}.ca.fc1", f"{cbam}.ca.fc2", f"{cbam}.sa.conv"]
    paths += ["aspp.project.conv", "aspp.project.bn", "decoder.low_proj.conv", "decoder.low_proj.bn"]
    for sep in ("decoder.sep1", "decoder.sep2"):
        paths += [f"{sep}.depthwise", f"{sep}.pointwise", f"{sep}.bn"]
    return [*paths, "head"]


def weighted_layer_paths(model) -> list[str]:
    paths = []
    for layer in model.layers:
        if layer.name == "backbone":
            paths += [f"backbone.{sub.name}" for sub in layer.layers if sub.weights]
        elif layer.weights:
            paths.append(layer.name)
    return paths


def raw_bands(shape, seed=0):
    """Raw band values spanning each band's [lo, hi] range, with some out-of-range values."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-100.0, 4100.0, size=shape).astype("float32")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_deeplab(5, stats=STATS)


@pytest.mark.parametrize("height,width", [(64, 64), (96, 160)])
def test_logits_match_input_size(model, height, width):
    out = model(raw_bands((2, height, width, 5)), training=False)
    assert tuple(out.shape) == (2, height, width, 1)
    assert out.dtype == "float32"
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("bands", [3, 7])
def test_other_band_counts(bands):
    net = build_deeplab(bands)
    assert net.get_layer("backbone").get_layer("conv1").kernel.shape == (7, 7, bands, 64)
    out = net(np.random.default_rng(1).random((1, 64, 64, bands), dtype=np.float32))
    assert tuple(out.shape) == (1, 64, 64, 1)


@pytest.mark.parametrize("height,width", [(72, 64), (64, 40)])
def test_size_not_multiple_of_16_is_rejected(model, height, width):
    with pytest.raises(ValueError, match="multiple of 16"):
        model(np.zeros((1, height, width, 5), "float32"))


def test_wrong_band_count_is_rejected(model):
    with pytest.raises(ValueError):
        model(np.zeros((1, 64, 64, 4), "float32"))
    with pytest.raises(ValueError, match="3 entries but num_bands is 5"):
        build_deeplab(5, stats={"lo": [0] * 3, "hi": [1] * 3, "mean": [0] * 3, "std": [1] * 3})


def test_weighted_layers_are_named_as_the_torch_modules(model):
    expected = expected_torch_paths()
    actual = weighted_layer_paths(model)
    assert len(set(expected)) == len(expected)
    assert len(set(actual)) == len(actual), "two weighted layers share a torch path"
    assert sorted(actual) == sorted(expected)
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("layer1.0.conv1").kernel.shape == (3, 3, 64, 64)
    assert model.get_layer("aspp.b0.cbam.ca.fc1").kernel.shape == (256, 16)
    assert model.get_layer("aspp.b0.cbam.ca.fc2").bias.shape == (256,)
    assert model.get_layer("aspp.pool.cbam.sa.conv").kernel.shape == (7, 7, 2, 1)
    assert model.get_layer("aspp.project.conv").kernel.shape == (1, 1, 1280, 256)
    assert model.get_layer("decoder.sep1.depthwise").kernel.shape == (3, 3, 304, 1)
    assert model.get_layer("head").bias.shape == (1,)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_backbone_geometry(encoder):
    backbone = build_resnet_backbone(5, encoder)
    assert backbone.name == "backbone"
    assert backbone.get_layer("layer2.0.conv1").strides == (2, 2)
    assert backbone.get_layer("layer2.0.downsample.0").strides == (2, 2)
    assert backbone.get_layer("layer4.0.downsample.0").strides == (1, 1)
    for k in range(TORCHVISION_BLOCKS[encoder][3]):
        for conv in ("conv1", "conv2"):
            layer = backbone.get_layer(f"layer4.{k}.{conv}")
            assert layer.dilation_rate == (2, 2) and layer.strides == (1, 1)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.epsilon, layer.momentum) == (1e-5, 0.9), layer.name
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias, layer.name
    low, high = backbone(np.zeros((1, 64, 96, 5), "float32"))
    assert tuple(low.shape) == (1, 16, 24, 64)
    assert tuple(high.shape) == (1, 4, 6, 512)


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_resnet18_model_has_the_resnet18_layers_and_keeps_its_encoder_through_a_file(tmp_path):
    small = build_deeplab(5, stats=STATS, encoder="resnet18")
    assert sorted(weighted_layer_paths(small)) == sorted(expected_torch_paths("resnet18"))
    assert small.get_config()["encoder"] == "resnet18"
    assert 15_000_000 < small.count_params() < 16_000_000  # ResNet-34 has 10.2M more, in layer1-layer4
    loaded = save_and_load(small, tmp_path / "small.keras")
    assert loaded.get_config()["encoder"] == "resnet18"
    x = raw_bands((1, 32, 32, 5), seed=7)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(small(x, training=False)))


def test_size_of_the_network(model):
    params = model.count_params()
    assert 25_000_000 < params < 26_500_000
    assert sum(int(np.prod(w.shape)) * 4 for w in model.weights) < 200 * 2**20


# Keras 3.15's Variable.__array__ predates numpy 2's copy keyword; saving converts every variable.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_file_round_trip(model, tmp_path):
    x = raw_bands((1, 64, 64, 5), seed=3)
    x[0, :3, :3, 1] = np.nan
    model.threshold = 0.37  # as training sets it after choosing it
    try:
        loaded = save_and_load(model, tmp_path / "model.keras")
    finally:
        model.threshold = 0.5
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False))
    )
    assert type(loaded) is GlacierDeepLab
    assert loaded.get_config() == {**model.get_config(), "threshold": 0.37}
    assert isinstance(loaded.get_layer("decoder.sep1.depthwise"), FastDepthwiseConv2D)
    assert isinstance(loaded.get_layer("head"), FastConv2D)
    assert isinstance(loaded.get_layer("aspp.b0.cbam.sa.conv"), FastConv2D)
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("normalize").hi.value), STATS["hi"])


def test_config_is_exactly_the_constructor_arguments(model):
    config = model.get_config()
    assert tuple(config) == CONFIG_KEYS
    assert config == {
        "num_bands": 5,
        "band_names": ["B1", "B2", "B3", "B4", "B5"],
        "task": "binary",
        "class_names": ["background", "glacier"],
        "class_values": [0, 255],
        "encoder": "resnet34",
        "aspp_rates": [6, 12, 18],
        "reduction": 16,
        "dropout": 0.1,
        "output_stride": 16,
        "threshold": 0.5,
        "stats": {key: pytest.approx(STATS[key]) for key in ("lo", "hi", "mean", "std")},
    }
    # the statistics reported are the weights' values, so replaced weights say so too
    bare = GlacierDeepLab.from_config({**config, "stats": None})
    assert bare.get_config()["stats"]["hi"] == [1.0] * 5
    bare.set_weights(model.get_weights())
    assert bare.get_config() == config
    x = raw_bands((1, 32, 32, 5), seed=5)
    np.testing.assert_array_equal(np.asarray(bare(x, training=False)), np.asarray(model(x, training=False)))


def test_multiclass_model_has_one_logit_per_class():
    names = ["background", "glacier", "debris", "lake"]
    net = build_deeplab(
        4, band_names=["B2", "B3", "B4", "B6"], task="multiclass", class_names=names, aspp_rates=(3, 6, 9),
        reduction=8, dropout=0.0, threshold=0.4,
    )
    assert net.get_layer("head").kernel.shape == (1, 1, 256, 4)
    out = net(raw_bands((2, 32, 48, 4)), training=False)
    assert tuple(out.shape) == (2, 32, 48, 4) and out.dtype == "float32"
    config = net.get_config()
    assert config["class_values"] == [0, 85, 170, 255] and config["band_names"] == ["B2", "B3", "B4", "B6"]
    assert (config["aspp_rates"], config["reduction"], config["dropout"]) == ([3, 6, 9], 8, 0.0)
    clone = GlacierDeepLab.from_config(config)
    assert clone.get_config() == config and net.num_classes == 4
    hkh = build_deeplab(3, task="multiclass", class_names=("background", "clean_ice", "debris"))
    assert hkh.get_config()["class_values"] == [0, 85, 170] and hkh.output_shape[-1] == 3


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"output_stride": 8}, "only output_stride=16 is supported"),
        ({"task": "regression"}, "task must be one of binary, multiclass"),
        ({"band_names": ["B1", "B2"]}, "band_names has 2 names but num_bands is 5"),
        ({"task": "multiclass"}, "multiclass model needs at least 2 class_names"),
        ({"task": "multiclass", "class_names": ["background", "snow"]}, "no default mask value for class.*snow"),
        ({"task": "multiclass", "class_names": ["a", "b"], "class_values": [0]}, "2 integers in 0..255"),
        ({"class_names": ["background", "glacier", "lake"]}, "binary model has 2 classes"),
        ({"class_values": [0, 256]}, "integers in 0..255"),
        ({"threshold": 1.0}, "threshold must be a probability"),
        ({"num_bands": 0}, "num_bands must be positive"),
        ({"encoder": "resnet50"}, "encoder must be one of resnet18, resnet34, got 'resnet50'"),
    ],
)
def test_bad_configuration_is_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_deeplab(**{"num_bands": 5, **arguments})


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_custom_layers_round_trip_config_and_files(tmp_path):
    x = raw_bands((1, 16, 16, 2), seed=6)
    x[0, 1, 2, 0] = np.nan
    layers = [
        (BandNormalization([0.0, 100.0], [4000.0, 900.0], [0.5, 0.4], [0.2, 0.3], name="normalize"), x),
        (keras_glacier.model.ChannelMaxMean(name="pool"), x),
        (keras_glacier.model.SpatialBroadcast(name="broadcast"), [x[:, :1, :1], x]),
        (FastConv2D(3, 3, padding="same", dilation_rate=6, name="conv"), x),
        (FastDepthwiseConv2D(3, padding="same", name="depthwise"), x),
        (keras_glacier.model.FastMaxPooling2D(3, strides=2, name="maxpool"), x),
    ]
    for layer, inputs in layers:
        assert_config_round_trip(layer, None if isinstance(inputs, list) else np.nan_to_num(inputs))
        assert_save_load(layer, inputs, tmp_path / f"{layer.name}.keras")


def test_mixed_bfloat16_gives_float32_logits():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        net = build_deeplab(3)
    finally:
        keras.config.set_dtype_policy(previous)
    assert net.get_layer("backbone").get_layer("conv1").compute_dtype == "bfloat16"
    assert net.get_layer("normalize").compute_dtype == "float32"
    out = net(np.random.default_rng(2).random((1, 64, 64, 3), dtype=np.float32))
    assert out.dtype == "float32"
    assert np.isfinite(np.asarray(out)).all()


def test_band_normalization_formula():
    lo, hi = np.array([10.0, -1.0], "float32"), np.array([110.0, 1.0], "float32")
    mean, std = np.array([0.5, 0.25], "float32"), np.array([0.2, 0.5], "float32")
    layer = BandNormalization(lo, hi, mean, std)
    x = np.random.default_rng(0).uniform(-5.0, 130.0, size=(2, 16, 32, 2)).astype("float32")
    x[0, 0, 0] = [np.nan, 0.5]
    x[0, 0, 1] = [np.inf, -np.inf]
    x[1, 3, 4, 1] = np.nan
    out = np.asarray(layer(x))
    finite = np.isfinite(x)
    u = np.clip((np.where(finite, x, lo) - lo) / (hi - lo), 0, 1)
    expected = np.where(finite, (u - mean) / std, 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 0] == 0 and out[0, 0, 1, 1] == 0 and out[1, 3, 4, 1] == 0
    assert out[0, 0, 0, 1] == pytest.approx((0.75 - 0.25) / 0.5)
    assert {w.name for w in layer.non_trainable_weights} == {"lo", "hi", "mean", "std"}
    assert not layer.trainable_weights
    clone = assert_config_round_trip(layer)
    np.testing.assert_array_equal(np.asarray(clone(x)), out)
    with pytest.raises(ValueError, match="same length"):
        BandNormalization([0.0], [1.0, 2.0], [0.0], [1.0])


def test_two_jit_steps_reduce_the_loss(model):
    x = raw_bands((2, 64, 64, 5), seed=4)
    y = (x[..., :1] > 2000).astype("float32")
    y[:, :8] = 255
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=BceDiceLoss(),
        metrics=segmentation_metrics(),
        jit_compile=True,
    )
    losses = []
    for _ in range(3):
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(logs["loss"])
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    assert set(SCORE_NAMES) <= set(logs)
    assert -1.0 <= logs["mcc"] <= 1.0 and 0.0 <= logs["iou"] <= 1.0
