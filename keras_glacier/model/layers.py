"""Small serialisable layers of the glacier network.

Two groups live here:

* helpers the functional graph needs but Keras has no layer for (input standardisation with
  no-data handling, the [max, mean] channel summary of CBAM's spatial attention, broadcasting the
  ASPP image-pool branch back to the feature map's size);
* drop-in ``Conv2D`` / ``DepthwiseConv2D`` / ``MaxPooling2D`` subclasses that keep the stock weight
  layout and config (so saving, loading and the PyTorch conversion treat them exactly like the stock
  layers) but, when traced by JAX for the CPU, express the operation as plain slicing and matmuls.
  XLA:CPU lowers grouped (depthwise) convolutions, 1x1 convolutions and the max-pool gradient to
  slow generic loops, and computes every tap of a dilated convolution even where it only reads zero
  padding; shifted multiply-adds, GEMMs and slice maxima are the same arithmetic and several times
  faster there (figures: benchmarks/PERFORMANCE.md). On any other backend or platform the stock
  implementation runs.
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from keras_glacier.constants import OUTPUT_STRIDE

PACKAGE = "keras_glacier"


def _on_jax_cpu() -> bool:
    """Whether the graph being traced will run through XLA:CPU (decided at trace time)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def _as_vector(values, name: str) -> list[float]:
    if values is None:
        raise ValueError(f"BandNormalization: '{name}' is required")
    out = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if not out:
        raise ValueError(f"BandNormalization: '{name}' must not be empty")
    return out


@keras.saving.register_keras_serializable(package=PACKAGE)
class BandNormalization(keras.layers.Layer):
    """Maps raw band values to standardised inputs, carrying the training statistics in the model.

    The statistics are non-trainable weights (not only config) so that they travel with the weights
    into the PyTorch twin as the ``normalize.lo/hi/mean/std`` buffers. Non-finite inputs become 0
    (the training mean) instead of poisoning the whole receptive field. It computes in float32 by
    default, because raw band values (e.g. reflectance in the thousands) do not survive bfloat16.
    It also rejects spatial sizes the encoder cannot divide by its output stride, since otherwise
    the decoder's fixed x4 upsamplings would silently produce a misaligned map.
    """

    def __init__(self, lo, hi, mean, std, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.lo_init = _as_vector(lo, "lo")
        self.hi_init = _as_vector(hi, "hi")
        self.mean_init = _as_vector(mean, "mean")
        self.std_init = _as_vector(std, "std")
        sizes = {len(self.lo_init), len(self.hi_init), len(self.mean_init), len(self.std_init)}
        if len(sizes) != 1:
            raise ValueError(
                "BandNormalization: lo, hi, mean and std must have the same length, got "
                f"{len(self.lo_init)}, {len(self.hi_init)}, {len(self.mean_init)}, {len(self.std_init)}"
            )
        self.num_bands = len(self.lo_init)
        self.supports_masking = False

    @staticmethod
    def _check_spatial(shape) -> None:
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and int(size) % OUTPUT_STRIDE != 0:
                raise ValueError(
                    f"input {axis} {int(size)} is not a multiple of {OUTPUT_STRIDE} "
                    f"(the network's output stride); pad or crop the tile"
                )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"BandNormalization expects (batch, height, width, bands), got {input_shape}")
        if input_shape[-1] is not None and int(input_shape[-1]) != self.num_bands:
            raise ValueError(
                f"model expects {self.num_bands} bands (statistics have {self.num_bands} entries) "
                f"but the input has {int(input_shape[-1])}"
            )
        self._check_spatial(input_shape)

        def add(name, values):
            return self.add_weight(
                name=name,
                shape=(self.num_bands,),
                initializer=keras.initializers.Constant(values),
                trainable=False,
                dtype="float32",
            )

        self.lo = add("lo", self.lo_init)
        self.hi = add("hi", self.hi_init)
        self.mean = add("mean", self.mean_init)
        self.std = add("std", self.std_init)

    def call(self, inputs):
        self._check_spatial(inputs.shape)
        x = ops.cast(inputs, "float32")
        lo = ops.cast(self.lo, "float32")
        hi = ops.cast(self.hi, "float32")
        mean = ops.cast(self.mean, "float32")
        std = ops.cast(self.std, "float32")
        finite = ops.isfinite(x)
        xs = ops.where(finite, x, lo)
        u = ops.clip((xs - lo) / (hi - lo), 0.0, 1.0)
        z = (u - mean) / std
        z = ops.where(finite, z, ops.zeros_like(z))
        return ops.cast(z, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(lo=self.lo_init, hi=self.hi_init, mean=self.mean_init, std=self.std_init)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelMaxMean(keras.layers.Layer):
    """CBAM's spatial-attention descriptor: [max, mean] over channels (max first, as in the twin)."""

    def call(self, inputs):
        return ops.concatenate(
            [ops.max(inputs, axis=-1, keepdims=True), ops.mean(inputs, axis=-1, keepdims=True)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialBroadcast(keras.layers.Layer):
    """Broadcasts a (B, 1, 1, C) map to the height and width of a reference map.

    This is what bilinear upsampling of a 1x1 map does in the PyTorch twin, without needing the
    (dynamic) target size as a layer argument.
    """

    def call(self, inputs):
        x, like = inputs
        shape = ops.shape(like)
        return ops.broadcast_to(x, (shape[0], shape[1], shape[2], x.shape[-1]))

    def compute_output_shape(self, input_shape):
        x_shape, like_shape = input_shape
        return (like_shape[0], like_shape[1], like_shape[2], x_shape[-1])


#: A stride-1 "same" convolution runs tap by tap on XLA:CPU when at most this fraction of its
#: kernel-tap x pixel products read the image rather than the zero padding (measured crossover:
#: ASPP rates 6-18 on 16x16 and rates 12-18 on 32x32 maps are 1.3-10x faster tap by tap, while
#: layer4's rate-2 convolutions (fraction 0.77-0.88) are not).
SPARSE_TAP_FRACTION = 0.6


def _tap_windows(height: int, width: int, kernel_size, dilation):
    """Every kernel tap that reads inside the image, with the output rows/columns it reaches.

    Yields (i, j, di, dj, r0, r1, c0, c1): tap (i, j) multiplies input pixel (y + di, x + dj) into
    output pixel (y, x) for r0 <= y < r1, c0 <= x < c1; outside that box it reads zero padding.
    """
    (kh, kw), (dh, dw) = kernel_size, dilation
    for i in range(kh):
        di = (i - kh // 2) * dh
        r0, r1 = max(0, -di), min(height, height - di)
        if r1 <= r0:
            continue
        for j in range(kw):
            dj = (j - kw // 2) * dw
            c0, c1 = max(0, -dj), min(width, width - dj)
            if c1 > c0:
                yield i, j, di, dj, r0, r1, c0, c1


def _valid_tap_fraction(height: int, width: int, kernel_size, dilation) -> float:
    area = sum((r1 - r0) * (c1 - c0) for *_, r0, r1, c0, c1 in _tap_windows(height, width, kernel_size, dilation))
    return area / (kernel_size[0] * kernel_size[1] * height * width)


@functools.cache
def _tap_conv_fn(kernel_size: tuple[int, int], dilation: tuple[int, int]):
    """A stride-1 "same" NHWC convolution as one matmul per kernel tap over the pixels it reaches.

    Taps that only ever read zero padding (a dilation as large as the feature map, as in the
    ASPP at stride 16) are skipped, and the others only multiply the rows and columns that read
    the image, which XLA's convolution does not do. The backward pass is written the same way
    (each tap's input gradient is a matmul with the tap's (in, out) matrix contracted on its
    output axis, each tap's weight gradient a matmul of the matching input and output windows),
    so no transposed or reversed copy of the kernel is ever made. Products accumulate in float32.
    """
    import jax
    from jax import lax
    from jax import numpy as jnp

    def conv(x, kernel):
        height, width = x.shape[1], x.shape[2]
        total = None
        for i, j, di, dj, r0, r1, c0, c1 in _tap_windows(height, width, kernel_size, dilation):
            window = x[:, r0 + di : r1 + di, c0 + dj : c1 + dj, :]
            part = lax.dot_general(window, kernel[i, j], (((3,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            part = jnp.pad(part, ((0, 0), (r0, height - r1), (c0, width - c1), (0, 0)))
            total = part if total is None else total + part
        return total.astype(x.dtype)

    @jax.custom_vjp
    def tap_conv(x, kernel):
        return conv(x, kernel)

    def tap_conv_fwd(x, kernel):
        return conv(x, kernel), (x, kernel)

    def tap_conv_bwd(residual, grad):
        x, kernel = residual
        height, width = x.shape[1], x.shape[2]
        dx = None
        dk = [[None] * kernel.shape[1] for _ in range(kernel.shape[0])]
        for i, j, di, dj, r0, r1, c0, c1 in _tap_windows(height, width, kernel_size, dilation):
            g = grad[:, r0:r1, c0:c1, :]
            part = lax.dot_general(g, kernel[i, j], (((3,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            part = jnp.pad(part, ((0, 0), (r0 + di, height - r1 - di), (c0 + dj, width - c1 - dj), (0, 0)))
            dx = part if dx is None else dx + part
            window = x[:, r0 + di : r1 + di, c0 + dj : c1 + dj, :]
            dk[i][j] = lax.dot_general(
                window, g, (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=jnp.float32
            )
        zero = jnp.zeros(kernel.shape[2:], jnp.float32)
        dk = jnp.stack([jnp.stack([zero if t is None else t for t in row]) for row in dk])
        return dx.astype(x.dtype), dk.astype(kernel.dtype)

    tap_conv.defvjp(tap_conv_fwd, tap_conv_bwd)
    return tap_conv


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastConv2D(keras.layers.Conv2D):
    """``Conv2D`` that runs its 1x1 and mostly-padding cases as matmuls on XLA:CPU (same weights).

    A 1x1 kernel with stride s reads exactly the pixels ``x[:, ::s, ::s]`` whatever the padding mode
    (neither "valid" nor "same" pads for k=1), so strided 1x1 convolutions are one matmul. A stride-1
    "same" convolution whose dilated taps mostly fall into the zero padding (see
    ``SPARSE_TAP_FRACTION``) runs tap by tap (``_tap_conv_fn``); the choice is made per input shape
    when the graph is traced. Everything else, and every other backend/platform, is the stock op.
    """

    def _on_cpu_channels_last(self) -> bool:
        return self.groups == 1 and self.data_format == "channels_last" and _on_jax_cpu()

    def _use_matmul(self) -> bool:
        return tuple(self.kernel_size) == (1, 1) and self._on_cpu_channels_last()

    def _use_taps(self, input_shape) -> bool:
        height, width = input_shape[1], input_shape[2]
        kh, kw = self.kernel_size
        return (
            height is not None
            and width is not None
            and kh % 2 == 1
            and kw % 2 == 1
            and tuple(self.strides) == (1, 1)
            and self.padding == "same"
            and self._on_cpu_channels_last()
            and _valid_tap_fraction(int(height), int(width), self.kernel_size, self.dilation_rate)
            <= SPARSE_TAP_FRACTION
        )

    def convolution_op(self, inputs, kernel):
        if self._use_matmul():
            sh, sw = self.strides
            if (sh, sw) != (1, 1):
                inputs = inputs[:, ::sh, ::sw, :]
            return ops.matmul(inputs, kernel[0, 0])
        if self._use_taps(inputs.shape):
            conv = _tap_conv_fn(tuple(self.kernel_size), tuple(self.dilation_rate))
            return conv(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel))
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` that runs as shifted multiply-adds on XLA:CPU (same weights, same result).

    Covers the stride-1, "same"-padded, depth-multiplier-1 case with odd kernel sizes (any dilation);
    every other configuration, and every other backend/platform, uses the stock convolution.
    """

    def _use_shifts(self) -> bool:
        kh, kw = self.kernel_size
        return (
            kh % 2 == 1
            and kw % 2 == 1
            and tuple(self.strides) == (1, 1)
            and self.padding == "same"
            and self.depth_multiplier == 1
            and self.data_format == "channels_last"
            and _on_jax_cpu()
        )

    def call(self, inputs):
        if not self._use_shifts():
            return super().call(inputs)
        # Accumulate the taps in float32 even under a bfloat16 policy (XLA:CPU emulates bf16 anyway).
        kernel = ops.cast(self.kernel, "float32")
        inputs = ops.cast(inputs, "float32")
        kh, kw = self.kernel_size
        dh, dw = self.dilation_rate
        ph, pw = (kh - 1) // 2 * dh, (kw - 1) // 2 * dw
        height, width = inputs.shape[1], inputs.shape[2]
        padded = ops.pad(inputs, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
        outputs = None
        for i in range(kh):
            for j in range(kw):
                window = padded[:, i * dh : i * dh + height, j * dw : j * dw + width, :]
                term = window * kernel[i, j, :, 0]
                outputs = term if outputs is None else outputs + term
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, "float32")
        outputs = ops.cast(outputs, self.compute_dtype)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


@functools.cache
def _first_max_pool_fn(pool: tuple[int, int], strides: tuple[int, int]):
    """A JAX max-pool ("valid", NHWC) as a max over shifted strided slices, with torch's gradient.

    XLA:CPU differentiates ``reduce_window(max)`` through a variadic reduce-window over (value,
    index) pairs plus materialised iotas and a scatter, several times the cost of the pooling
    itself. Here the forward keeps, per output pixel, the index of the first window element that
    holds the maximum (row-major order, NaN wins, as in PyTorch's CPU kernel); the backward sends
    the whole incoming gradient to that element, by scattering each tap's share back with an
    interior-padded ``lax.pad``. Values are bit-identical to ``reduce_window``; gradients equal
    PyTorch's ``max_pool2d`` backward (ties go to the first maximum, never split).
    """
    import jax
    from jax import lax
    from jax import numpy as jnp

    (ph, pw), (sh, sw) = pool, strides

    def taps(x):
        height, width = x.shape[1], x.shape[2]
        out_h, out_w = (height - ph) // sh + 1, (width - pw) // sw + 1
        for i in range(ph):
            for j in range(pw):
                yield i, j, x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]

    def forward(x):
        best, index = None, None
        for i, j, window in taps(x):
            k = i * pw + j
            if best is None:
                best, index = window, jnp.zeros(window.shape, jnp.int8)
                continue
            better = (window > best) | jnp.isnan(window)
            best = jnp.where(better, window, best)
            index = jnp.where(better, jnp.int8(k), index)
        return best, index

    @jax.custom_vjp
    def pool_fn(x):
        return forward(x)[0]

    def pool_fwd(x):
        best, index = forward(x)
        return best, (index, x.shape)

    def pool_bwd(residual, grad):
        index, shape = residual
        height, width = shape[1], shape[2]
        out_h, out_w = grad.shape[1], grad.shape[2]
        zero = jnp.zeros((), grad.dtype)
        total = None
        for i in range(ph):
            for j in range(pw):
                share = jnp.where(index == i * pw + j, grad, zero)
                rows = (i, height - i - (sh * (out_h - 1) + 1), sh - 1)
                cols = (j, width - j - (sw * (out_w - 1) + 1), sw - 1)
                part = lax.pad(share, zero, [(0, 0, 0), rows, cols, (0, 0, 0)])
                total = part if total is None else total + part
        return (total,)

    pool_fn.defvjp(pool_fwd, pool_bwd)
    return pool_fn


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastMaxPooling2D(keras.layers.MaxPooling2D):
    """``MaxPooling2D`` whose "valid" channels-last case runs as shifted-slice maxima on XLA:CPU.

    Same output as the stock layer; the gradient goes to the first maximum of each window, as in
    PyTorch (see ``_first_max_pool_fn``). Every other configuration, backend and platform uses the
    stock pooling.
    """

    def _use_slices(self) -> bool:
        return self.padding == "valid" and self.data_format == "channels_last" and _on_jax_cpu()

    def call(self, inputs):
        if not self._use_slices():
            return super().call(inputs)
        return _first_max_pool_fn(tuple(self.pool_size), tuple(self.strides))(inputs)
