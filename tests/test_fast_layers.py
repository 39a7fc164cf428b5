"""The XLA:CPU fast paths of FastMaxPooling2D, FastDepthwiseConv2D and FastConv2D (matmuls, tap by tap,
blocked weight gradients): same numbers as the stock layers (and, for the max-pool gradient, as PyTorch),
and really taken on JAX CPU."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import jax
import keras
import numpy as np
import pytest
import torch

from keras_glacier.model import layers
from keras_glacier.model.layers import (
    SPARSE_TAP_FRACTION,
    FastConv2D,
    FastDepthwiseConv2D,
    FastMaxPooling2D,
    _valid_tap_fraction,
)


def _value_and_grads(layer, x):
    """Output, gradients (input first, then each weight) of sum(sin(layer(x))), and the jaxpr."""
    weights = [v.value for v in layer.trainable_variables]

    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return jax.numpy.sum(jax.numpy.sin(y)), y

    (_, y), (g_weights, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(weights, x)
    jaxpr = str(jax.make_jaxpr(loss)(weights, x))
    return np.asarray(y), [np.asarray(g_x)] + [np.asarray(g) for g in g_weights], jaxpr


def _paired(fast, stock, shape):
    fast.build(shape)
    stock.build(shape)
    assert [w.shape for w in fast.weights] == [w.shape for w in stock.weights]
    for target, source in zip(stock.weights, fast.weights, strict=True):
        target.assign(source.value)
    return fast, stock


def _relu_map_with_ties(shape, seed=0):
    """A post-ReLU feature map with zeros and flat (tied) regions, like the stem's on no-data stripes."""
    x = np.maximum(np.random.default_rng(seed).normal(size=shape), 0.0).astype("float32")
    x[:, :, :5] = 1.5
    x[:, 3:6] = 0.0
    return x


def test_fast_max_pool_equals_stock_values_and_torch_gradients():
    x = _relu_map_with_ties((2, 19, 17, 3))  # odd sizes: the last window ends before the border
    fast, stock = FastMaxPooling2D(3, strides=2), keras.layers.MaxPooling2D(3, strides=2)
    y_fast, (g_fast,), jaxpr_fast = _value_and_grads(fast, x)
    y_stock, (g_stock,), jaxpr_stock = _value_and_grads(stock, x)
    assert "reduce_window" in jaxpr_stock
    assert "reduce_window" not in jaxpr_fast, "the fast path was not taken on JAX CPU"
    np.testing.assert_array_equal(y_fast, y_stock)

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2)
    torch.sin(yt).sum().backward()
    np.testing.assert_array_equal(y_fast, yt.detach().numpy().transpose(0, 2, 3, 1))
    # Ties (the flat regions) send the whole gradient to the first maximum, as PyTorch does; only
    # the summation order of overlapping windows may differ.
    np.testing.assert_allclose(g_fast, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(g_fast) == np.count_nonzero(xt.grad.numpy())
    np.testing.assert_allclose(g_fast.sum(), g_stock.sum(), rtol=1e-5)


def test_fast_max_pool_other_configurations_use_the_stock_op():
    x = _relu_map_with_ties((1, 8, 8, 2))
    layer = FastMaxPooling2D(2, padding="same")
    y, _, jaxpr = _value_and_grads(layer, x)
    assert "reduce_window" in jaxpr
    np.testing.assert_array_equal(y, np.asarray(keras.layers.MaxPooling2D(2, padding="same")(x)))
    clone = FastMaxPooling2D.from_config(FastMaxPooling2D(3, strides=2, name="maxpool").get_config())
    assert (clone.pool_size, clone.strides, clone.padding, clone.name) == ((3, 3), (2, 2), "valid", "maxpool")


def test_valid_tap_fraction():
    assert _valid_tap_fraction(16, 16, (3, 3), (1, 1)) == pytest.approx((16 + 15 + 15) ** 2 / (9 * 256))
    assert _valid_tap_fraction(16, 16, (3, 3), (18, 18)) == pytest.approx(1 / 9)  # only the centre tap
    assert _valid_tap_fraction(16, 16, (3, 3), (12, 12)) == pytest.approx((16 + 4 + 4) ** 2 / (9 * 256))
    # the ASPP at stride 16 of a 256 crop goes tap by tap, layer4's rate 2 does not
    assert _valid_tap_fraction(16, 16, (3, 3), (6, 6)) <= SPARSE_TAP_FRACTION
    assert _valid_tap_fraction(16, 16, (3, 3), (2, 2)) > SPARSE_TAP_FRACTION


@pytest.mark.parametrize(
    "size,dilation,use_bias",
    [((16, 16), 12, False), ((8, 10), 6, True), ((5, 7), 3, False), ((4, 4), 18, False)],
    ids=["aspp-12", "non-square-bias", "odd-size", "centre-tap-only"],
)
def test_sparse_dilated_conv_equals_stock(size, dilation, use_bias):
    x = np.random.default_rng(1).normal(size=(2, *size, 6)).astype("float32")
    fast, stock = _paired(
        FastConv2D(5, 3, padding="same", dilation_rate=dilation, use_bias=use_bias, bias_initializer="ones"),
        keras.layers.Conv2D(5, 3, padding="same", dilation_rate=dilation, use_bias=use_bias),
        x.shape,
    )
    assert fast._use_taps(x.shape)
    y_fast, g_fast, jaxpr_fast = _value_and_grads(fast, x)
    y_stock, g_stock, _ = _value_and_grads(stock, x)
    assert "conv_general_dilated" not in jaxpr_fast, "the tap path was not taken on JAX CPU"
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-5, atol=1e-5)
    assert len(g_fast) == len(g_stock) == len(fast.weights) + 1
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_dense_conv_keeps_the_stock_op():
    x = np.random.default_rng(2).normal(size=(1, 16, 16, 4)).astype("float32")
    fast, stock = _paired(
        FastConv2D(3, 3, padding="same", dilation_rate=2, use_bias=False),
        keras.layers.Conv2D(3, 3, padding="same", dilation_rate=2, use_bias=False),
        x.shape,
    )
    assert not fast._use_taps(x.shape)
    y_fast, _, jaxpr_fast = _value_and_grads(fast, x)
    assert "conv_general_dilated" in jaxpr_fast
    np.testing.assert_array_equal(y_fast, _value_and_grads(stock, x)[0])
    strided = FastConv2D(3, 3, strides=2, padding="valid", dilation_rate=1)
    assert not strided._use_taps((1, 4, 4, 4))


def test_tap_conv_under_mixed_precision_keeps_the_policy():
    x = np.random.default_rng(3).normal(size=(1, 8, 8, 4)).astype("float32")
    layer = FastConv2D(2, 3, padding="same", dilation_rate=6, dtype="mixed_bfloat16")
    y = layer(x)
    assert layer._use_taps(x.shape)
    assert y.dtype == "bfloat16"
    reference = keras.layers.Conv2D(2, 3, padding="same", dilation_rate=6)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(y, "float32"), np.asarray(reference(x)), rtol=3e-2, atol=3e-2)


def test_block_size_divides_the_pixels():
    assert layers._block_size(384, 64) == 64
    assert layers._block_size(1000, 4096) == 1000  # small: one block
    assert layers._block_size(12288, 4096) == 4096
    assert layers._block_size(10000, 4096) == 2500  # largest divisor in [1024, 4096]
    assert layers._block_size(4099, 4096) == 4099  # a prime: no divisor, one block


@pytest.mark.parametrize(
    "make_fast,make_stock,shape",
    [
        (lambda: FastConv2D(6, 1, use_bias=False), lambda: keras.layers.Conv2D(6, 1, use_bias=False), (2, 16, 12, 8)),
        (lambda: FastConv2D(6, 1, strides=2), lambda: keras.layers.Conv2D(6, 1, strides=2), (2, 16, 12, 8)),
        (lambda: FastConv2D(4, 7, strides=2, use_bias=False),
         lambda: keras.layers.Conv2D(4, 7, strides=2, use_bias=False), (2, 22, 20, 5)),
        (lambda: FastConv2D(4, 3, strides=2, dilation_rate=1), lambda: keras.layers.Conv2D(4, 3, strides=2),
         (2, 18, 14, 6)),
        (lambda: FastConv2D(4, 3, padding="same", dilation_rate=2, use_bias=False),
         lambda: keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2, use_bias=False), (2, 16, 12, 6)),
        (lambda: FastConv2D(3, 2, padding="same"), lambda: keras.layers.Conv2D(3, 2, padding="same"), (1, 9, 7, 4)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=6), lambda: keras.layers.Conv2D(
            5, 3, padding="same", dilation_rate=6), (2, 16, 8, 6)),
        (lambda: FastConv2D(5, 3, padding="same"), lambda: keras.layers.Conv2D(5, 3, padding="same"), (1, 12, 10, 6)),
    ],
    ids=["pointwise", "pointwise-strided", "stem-7x7-s2", "3x3-s2", "3x3-dilated", "2x2-same-even", "taps",
         "3x3-one-block"],  # fmt: skip
)
def test_blocked_weight_gradients_equal_stock(monkeypatch, request, make_fast, make_stock, shape):
    """Small blocks force the loops over pixel / row blocks to run several times (one-block: no loop)."""
    if "one-block" in request.node.callspec.id:
        assert shape[1] * shape[2] <= layers.IM2COL_BLOCK  # one image within one block: a single GEMM
    else:
        monkeypatch.setattr(layers, "WEIGHT_GRADIENT_BLOCK", 64)
        monkeypatch.setattr(layers, "IM2COL_BLOCK", 40)
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    fast, stock = _paired(make_fast(), make_stock(), x.shape)
    y_fast, g_fast, jaxpr_fast = _value_and_grads(fast, x)
    y_stock, g_stock, _ = _value_and_grads(stock, x)
    assert "custom_vjp_call" in jaxpr_fast, "no fast path was taken on JAX CPU"
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-5, atol=1e-5)
    assert len(g_fast) == len(g_stock) == len(fast.weights) + 1
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kernel,dilation,shape",
    [(3, 1, (2, 13, 7, 5)), (5, (2, 1), (1, 12, 9, 3))],
    ids=["odd-height", "5x5-anisotropic-dilation"],
)
def test_depthwise_backward_equals_stock(kernel, dilation, shape):
    x = np.random.default_rng(6).normal(size=shape).astype("float32")
    fast, stock = _paired(
        FastDepthwiseConv2D(kernel, padding="same", dilation_rate=dilation, use_bias=False),
        keras.layers.DepthwiseConv2D(kernel, padding="same", dilation_rate=dilation, use_bias=False),
        x.shape,
    )
    y_fast, g_fast, jaxpr_fast = _value_and_grads(fast, x)
    y_stock, g_stock, _ = _value_and_grads(stock, x)
    assert "conv_general_dilated" not in jaxpr_fast, "the shifted path was not taken on JAX CPU"
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_im2col_conv_under_mixed_precision_keeps_the_policy():
    x = np.random.default_rng(7).normal(size=(2, 12, 12, 4)).astype("float32")
    layer = FastConv2D(3, 3, strides=2, dtype="mixed_bfloat16")
    layer.build(x.shape)
    assert layer._use_im2col_gradient()
    assert layer(x).dtype == "bfloat16"
    _, grads, _ = _value_and_grads(layer, x)
    reference = keras.layers.Conv2D(3, 3, strides=2)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    _, reference_grads, _ = _value_and_grads(reference, x)
    for a, b in zip(grads, reference_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a, "float32"), b, rtol=5e-2, atol=5e-2)


def test_rows_per_block_divides_the_height():
    assert layers._rows_per_block(16, 4) == 4
    assert layers._rows_per_block(13, 4) == 1  # a prime height: one row at a time
    assert layers._rows_per_block(64, 8192, row_size=2 * 64) == 64  # the whole map fits
    assert layers._rows_per_block(128, 8192, row_size=2 * 128) == 32
    assert layers._rows_per_block(6, 8192, row_size=10_000) == 1  # not even one row fits: still one
