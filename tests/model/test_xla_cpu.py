"""The XLA:CPU kernels behind FastMaxPooling2D, FastDepthwiseConv2D and FastConv2D (matmuls, tap by tap,
blocked weight gradients): same numbers as the stock ops (and, for the max-pool gradient, as PyTorch),
really taken on JAX CPU, and never taken under ``KERAS_GLACIER_KERNELS=stock``."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import keras
import numpy as np
import pytest
import torch

from keras_glacier import xla_cpu
from keras_glacier.model import FastConv2D, FastDepthwiseConv2D, FastMaxPooling2D
from keras_glacier.xla_cpu import tuning
from keras_glacier.xla_cpu.conv import conv2d_path, valid_tap_fraction
from tests.model.harness import KERNEL_MARK, assert_kernel_equals_stock, value_and_grads


def _relu_map_with_ties(shape, seed=0):
    """A post-ReLU feature map with zeros and flat (tied) regions, like the stem's on no-data stripes."""
    x = np.maximum(np.random.default_rng(seed).normal(size=shape), 0.0).astype("float32")
    x[:, :, :5] = 1.5
    x[:, 3:6] = 0.0
    return x


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_fast_max_pool_equals_stock_values_and_torch_gradients():
    x = _relu_map_with_ties((2, 19, 17, 3))  # odd sizes: the last window ends before the border
    layer = FastMaxPooling2D(3, strides=2)
    y_fast, (g_fast,), jaxpr_fast = value_and_grads(layer, x, "auto")
    y_stock, (g_stock,), jaxpr_stock = value_and_grads(layer, x, "stock")
    assert "reduce_window" in jaxpr_stock
    assert "reduce_window" not in jaxpr_fast, "the fast path was not taken on JAX CPU"
    np.testing.assert_array_equal(y_fast, y_stock)
    np.testing.assert_array_equal(y_stock, np.asarray(keras.layers.MaxPooling2D(3, strides=2)(x)))

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
    assert xla_cpu.max_pool_kernel((2, 2), (2, 2), "same") is None
    y, _, jaxpr = value_and_grads(FastMaxPooling2D(2, padding="same"), x)
    assert "reduce_window" in jaxpr
    np.testing.assert_array_equal(y, np.asarray(keras.layers.MaxPooling2D(2, padding="same")(x)))


def test_valid_tap_fraction():
    assert valid_tap_fraction(16, 16, (3, 3), (1, 1)) == pytest.approx((16 + 15 + 15) ** 2 / (9 * 256))
    assert valid_tap_fraction(16, 16, (3, 3), (18, 18)) == pytest.approx(1 / 9)  # only the centre tap
    assert valid_tap_fraction(16, 16, (3, 3), (12, 12)) == pytest.approx((16 + 4 + 4) ** 2 / (9 * 256))
    # the ASPP at stride 16 of a 256 crop goes tap by tap, layer4's rate 2 does not
    assert valid_tap_fraction(16, 16, (3, 3), (6, 6)) <= tuning.SPARSE_TAP_FRACTION
    assert valid_tap_fraction(16, 16, (3, 3), (2, 2)) > tuning.SPARSE_TAP_FRACTION


def test_conv2d_path_choice():
    def path(shape, kernel, strides=(1, 1), padding="same", dilation=(1, 1), **kw):
        return conv2d_path(shape, kernel, strides, padding, dilation, **kw)

    assert path((2, 16, 16, 8), (1, 1), strides=(2, 2), padding="valid") == "matmul"
    assert path((2, 16, 16, 8), (3, 3), dilation=(12, 12)) == "taps"
    assert path((2, 16, 16, 8), (3, 3), dilation=(2, 2)) == "im2col"  # layer4: mostly reads the image
    assert path((2, None, None, 8), (3, 3), dilation=(12, 12)) == "im2col"  # size unknown: no taps
    assert path((2, 16, 16, 8), (3, 3), strides=(2, 2), padding="valid") == "im2col"
    assert path((2, 16, 16, 8), (3, 3), strides=(2, 2), padding="same") is None
    assert path((2, 16, 16, 8), (3, 3), groups=2) is None
    assert path((2, 8, 16, 16), (1, 1), data_format="channels_first") is None
    # CBAM's 7x7 spatial convolution: the image-pool branch's 1x1 map reads only the centre tap
    assert path((2, 1, 1, 2), (7, 7)) == "taps" and path((2, 16, 16, 2), (7, 7)) == "im2col"


@pytest.mark.parametrize(
    "layer,shape",
    [
        (lambda: FastDepthwiseConv2D(3, padding="same", use_bias=False), (2, 16, 12, 8)),
        (lambda: FastDepthwiseConv2D(3, padding="same", dilation_rate=2, bias_initializer="ones"), (2, 16, 12, 8)),
        (lambda: FastDepthwiseConv2D(3, padding="same", use_bias=False), (2, 13, 7, 5)),
        (lambda: FastDepthwiseConv2D(5, padding="same", dilation_rate=(2, 1), use_bias=False), (1, 12, 9, 3)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=12, use_bias=False), (2, 16, 16, 6)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=6, bias_initializer="ones"), (2, 8, 10, 6)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=3, use_bias=False), (2, 5, 7, 6)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=18, use_bias=False), (2, 4, 4, 6)),
        (lambda: FastConv2D(1, 7, padding="same", use_bias=False), (2, 1, 1, 2)),
        (lambda: FastConv2D(1, 7, padding="same", use_bias=False), (2, 16, 16, 2)),
    ],
    ids=["depthwise", "depthwise-dilated-bias", "depthwise-odd-height", "depthwise-5x5-anisotropic",
         "taps-aspp-12", "taps-non-square-bias", "taps-odd-size", "taps-centre-only", "cbam-sa-1x1-map",
         "cbam-sa-16x16-map"],  # fmt: skip
)
def test_kernels_equal_stock(layer, shape):
    assert_kernel_equals_stock(layer(), _normal(shape, 1))


def test_tap_conv_under_mixed_precision_keeps_the_policy():
    x = _normal((1, 8, 8, 4), 3)
    layer = FastConv2D(2, 3, padding="same", dilation_rate=6, dtype="mixed_bfloat16")
    y = layer(x)
    assert conv2d_path(x.shape, (3, 3), (1, 1), "same", (6, 6)) == "taps"
    assert y.dtype == "bfloat16"
    with xla_cpu.kernels("stock"):
        reference = np.asarray(layer(x), "float32")
    np.testing.assert_allclose(np.asarray(y, "float32"), reference, rtol=3e-2, atol=3e-2)


def test_block_size_divides_the_pixels():
    assert tuning.block_size(384, 64) == 64
    assert tuning.block_size(1000, 4096) == 1000  # small: one block
    assert tuning.block_size(12288, 4096) == 4096
    assert tuning.block_size(10000, 4096) == 2500  # largest divisor in [1024, 4096]
    assert tuning.block_size(4099, 4096) == 4099  # a prime: no divisor, one block


@pytest.mark.parametrize(
    "make_layer,shape",
    [
        (lambda: FastConv2D(6, 1, use_bias=False), (2, 16, 12, 8)),
        (lambda: FastConv2D(6, 1, strides=2), (2, 16, 12, 8)),
        (lambda: FastConv2D(4, 7, strides=2, use_bias=False), (2, 22, 20, 5)),
        (lambda: FastConv2D(4, 3, strides=2, dilation_rate=1), (2, 18, 14, 6)),
        (lambda: FastConv2D(4, 3, padding="same", dilation_rate=2, use_bias=False), (2, 16, 12, 6)),
        (lambda: FastConv2D(3, 2, padding="same"), (1, 9, 7, 4)),
        (lambda: FastConv2D(5, 3, padding="same", dilation_rate=6), (2, 16, 8, 6)),
        (lambda: FastConv2D(5, 3, padding="same"), (1, 12, 10, 6)),
    ],
    ids=["pointwise", "pointwise-strided", "stem-7x7-s2", "3x3-s2", "3x3-dilated", "2x2-same-even", "taps",
         "3x3-one-block"],  # fmt: skip
)
def test_blocked_weight_gradients_equal_stock(monkeypatch, request, make_layer, shape):
    """Small blocks force the loops over pixel / row blocks to run several times (one-block: no loop)."""
    if "one-block" in request.node.callspec.id:
        assert shape[1] * shape[2] <= tuning.IM2COL_BLOCK  # one image within one block: a single GEMM
    else:
        monkeypatch.setattr(tuning, "WEIGHT_GRADIENT_BLOCK", 64)
        monkeypatch.setattr(tuning, "IM2COL_BLOCK", 40)
    assert_kernel_equals_stock(make_layer(), _normal(shape, 5))


def test_im2col_conv_under_mixed_precision_keeps_the_policy():
    x = _normal((2, 12, 12, 4), 7)
    layer = FastConv2D(3, 3, strides=2, dtype="mixed_bfloat16")
    layer.build(x.shape)
    assert conv2d_path(x.shape, (3, 3), (2, 2), "valid", (1, 1)) == "im2col"
    assert layer(x).dtype == "bfloat16"
    _, grads, jaxpr = value_and_grads(layer, x, "auto")
    _, reference_grads, _ = value_and_grads(layer, x, "stock")
    assert KERNEL_MARK in jaxpr
    for a, b in zip(grads, reference_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a, "float32"), np.asarray(b, "float32"), rtol=5e-2, atol=5e-2)


def test_rows_per_block_divides_the_height():
    assert tuning.rows_per_block(16, 4) == 4
    assert tuning.rows_per_block(13, 4) == 1  # a prime height: one row at a time
    assert tuning.rows_per_block(64, 8192, row_size=2 * 64) == 64  # the whole map fits
    assert tuning.rows_per_block(128, 8192, row_size=2 * 128) == 32
    assert tuning.rows_per_block(6, 8192, row_size=10_000) == 1  # not even one row fits: still one


def test_stock_mode_is_exactly_the_stock_layer():
    """Under "stock" a Fast layer traces the very op of its Keras base class (bit-identical outputs)."""
    x = _normal((2, 16, 12, 8), 8)
    pairs = [
        (FastConv2D(6, 1, use_bias=False), keras.layers.Conv2D(6, 1, use_bias=False)),
        (FastDepthwiseConv2D(3, padding="same"), keras.layers.DepthwiseConv2D(3, padding="same")),
        (FastMaxPooling2D(3, strides=2), keras.layers.MaxPooling2D(3, strides=2)),
    ]
    for fast, stock in pairs:
        fast.build(x.shape)
        stock.build(x.shape)
        stock.set_weights(fast.get_weights())
        y_fast, g_fast, jaxpr_fast = value_and_grads(fast, x, "stock")
        y_stock, g_stock, jaxpr_stock = value_and_grads(stock, x, "auto")
        assert jaxpr_fast == jaxpr_stock
        np.testing.assert_array_equal(y_fast, y_stock)
        for a, b in zip(g_fast, g_stock, strict=True):
            np.testing.assert_array_equal(a, b)
