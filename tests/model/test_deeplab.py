"""The Keras network: shapes, names (the conversion contract), serialisation, precision, fast layers."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import jax
import keras
import numpy as np
import pytest

from keras_glacier.losses import BceDiceLoss
from keras_glacier.metrics import SCORE_NAMES, segmentation_metrics
from keras_glacier.model import (
    BandNormalization,
    FastConv2D,
    FastDepthwiseConv2D,
    build_deeplab,
    build_resnet34_backbone,
)

STATS = {
    "lo": [100.0, 200.0, 50.0, 0.0, 10.0],
    "hi": [3000.0, 2500.0, 4000.0, 1.0, 60.0],
    "mean": [0.3, 0.4, 0.5, 0.2, 0.6],
    "std": [0.1, 0.2, 0.25, 0.3, 0.15],
    "bands": [1, 2, 3, 5, 9],  # metadata the model must ignore
}


def expected_torch_paths() -> list[str]:
    """Every weighted module path of the PyTorch twin, written out from SPEC.md's layout."""
    paths = ["normalize", "backbone.conv1", "backbone.bn1"]
    # (stage, blocks, block 0 has a downsample) of torchvision's ResNet-34
    for stage, blocks, downsample in (("layer1", 3, False), ("layer2", 4, True), ("layer3", 6, True),
                                      ("layer4", 3, True)):
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


def test_backbone_geometry():
    backbone = build_resnet34_backbone(5)
    assert backbone.name == "backbone"
    assert backbone.get_layer("layer2.0.conv1").strides == (2, 2)
    assert backbone.get_layer("layer2.0.downsample.0").strides == (2, 2)
    assert backbone.get_layer("layer4.0.downsample.0").strides == (1, 1)
    for k in range(3):
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


def test_size_of_the_network(model):
    params = model.count_params()
    assert 25_000_000 < params < 26_500_000
    assert sum(int(np.prod(w.shape)) * 4 for w in model.weights) < 200 * 2**20


# Keras 3.15's Variable.__array__ predates numpy 2's copy keyword; saving converts every variable.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_file_round_trip(model, tmp_path):
    x = raw_bands((1, 64, 64, 5), seed=3)
    x[0, :3, :3, 1] = np.nan
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False))
    )
    assert isinstance(loaded.get_layer("decoder.sep1.depthwise"), FastDepthwiseConv2D)
    assert isinstance(loaded.get_layer("head"), FastConv2D)
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("normalize").hi.value), STATS["hi"])


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
    clone = BandNormalization.from_config(layer.get_config())
    np.testing.assert_array_equal(np.asarray(clone(x)), out)
    with pytest.raises(ValueError, match="same length"):
        BandNormalization([0.0], [1.0, 2.0], [0.0], [1.0])


def _value_and_grads(layer, x):
    """Output and gradients (w.r.t. the input and every weight) of sum(sin(layer(x)))."""
    weights = [v.value for v in layer.trainable_variables]

    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return jax.numpy.sum(jax.numpy.sin(y)), y

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, y), grads = fn(weights, x)
    jaxpr = str(jax.make_jaxpr(loss)(weights, x))
    return np.asarray(y), [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)], jaxpr


@pytest.mark.parametrize(
    "fast,stock",
    [
        (lambda: FastDepthwiseConv2D(3, padding="same", use_bias=False),
         lambda: keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)),
        (lambda: FastDepthwiseConv2D(3, padding="same", dilation_rate=2, bias_initializer="ones"),
         lambda: keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2)),
        (lambda: FastConv2D(24, 1, use_bias=False), lambda: keras.layers.Conv2D(24, 1, use_bias=False)),
        (lambda: FastConv2D(24, 1, strides=2, bias_initializer="ones"),
         lambda: keras.layers.Conv2D(24, 1, strides=2)),
    ],
    ids=["depthwise", "depthwise-dilated-bias", "pointwise", "pointwise-strided-bias"],
)
def test_fast_layers_equal_stock_layers(fast, stock):
    x = np.random.default_rng(0).normal(size=(2, 16, 12, 8)).astype("float32")
    fast_layer, stock_layer = fast(), stock()
    fast_layer.build(x.shape)
    stock_layer.build(x.shape)
    assert [w.shape for w in fast_layer.weights] == [w.shape for w in stock_layer.weights]
    for target, source in zip(stock_layer.weights, fast_layer.weights, strict=True):
        target.assign(source.value)
    y_fast, g_fast, jaxpr_fast = _value_and_grads(fast_layer, x)
    y_stock, g_stock, jaxpr_stock = _value_and_grads(stock_layer, x)
    assert "conv_general_dilated" in jaxpr_stock
    assert "conv_general_dilated" not in jaxpr_fast, "the fast path was not taken on JAX CPU"
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-5, atol=1e-5)
    assert len(g_fast) == len(g_stock) == len(fast_layer.weights) + 1
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


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
