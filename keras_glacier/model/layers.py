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
  padding, and it computes weight gradients over the whole feature map at once, through transposed
  copies of its operands that run at a fraction of memory speed; shifted multiply-adds, GEMMs,
  slice maxima and weight gradients summed over blocks of pixels are the same arithmetic and
  several times faster there (figures: benchmarks/PERFORMANCE.md). On any other backend or platform
  the stock implementation runs.
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


#: Pixels per block of a blocked weight gradient (see ``_weight_gradient``): a block of a 300-channel
#: float32 operand is ~5 MB, so its transposed copy is made in cache rather than across main memory.
WEIGHT_GRADIENT_BLOCK = 4096


def _rows_per_block(rows: int, limit: int, row_size: int = 1) -> int:
    """The most rows (a divisor of ``rows``, at least 1) whose ``row_size`` elements stay within ``limit``."""
    return max((r for r in range(1, rows + 1) if rows % r == 0 and r * row_size <= limit), default=1)


def _block_size(total: int, target: int) -> int:
    """The largest divisor of ``total`` in [target / 4, target]; ``total`` itself when none (or small)."""
    if total <= target:
        return total
    for size in range(target, target // 4 - 1, -1):
        if total % size == 0:
            return size
    return total


def _weight_gradient(x, grad):
    """sum over all pixels of outer(x, grad): a convolution's weight gradient, (in, out) in float32.

    XLA:CPU's GEMM wants the contracted (pixel) axis innermost, so for the one big product it makes a
    transposed copy of an operand, and fuses that copy into whatever produced the operand (the
    BatchNorm backward, the depthwise forward): an elementwise loop that then writes across memory,
    3-5x slower than the arithmetic itself. Summing blocks of pixels in a loop keeps each transposed
    copy small and in cache (2x512 training step: the decoder's 1x1 weight gradients 53 -> ~8 ms).
    """
    from jax import lax
    from jax import numpy as jnp

    x = x.reshape(-1, x.shape[-1])
    grad = grad.reshape(-1, grad.shape[-1])
    total = x.shape[0]
    block = _block_size(total, WEIGHT_GRADIENT_BLOCK)
    contract = (((0,), (0,)), ((), ()))
    if block == total:
        return lax.dot_general(x, grad, contract, preferred_element_type=jnp.float32)

    def add_block(k, acc):
        xs = lax.dynamic_slice_in_dim(x, k * block, block, axis=0)
        gs = lax.dynamic_slice_in_dim(grad, k * block, block, axis=0)
        return acc + lax.dot_general(xs, gs, contract, preferred_element_type=jnp.float32)

    zero = jnp.zeros((x.shape[1], grad.shape[1]), jnp.float32)
    return lax.fori_loop(0, total // block, add_block, zero)


def _with_gradient(forward, backward):
    """``forward(x, kernel)`` as a JAX function whose gradient is ``backward((x, kernel), grad) -> (dx, dkernel)``.

    The residuals are just the two inputs: every backward pass here recomputes what it needs from them.
    """
    import jax

    function = jax.custom_vjp(forward)
    function.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)), backward)
    return function


@functools.cache
def _pointwise_fn():
    """``x @ kernel`` over the last axis (a 1x1 convolution) whose weight gradient is blocked."""
    from jax import numpy as jnp

    def pointwise_bwd(residual, grad):
        x, kernel = residual
        dx = jnp.matmul(grad, kernel.T).astype(x.dtype)
        return dx, _weight_gradient(x, grad).astype(kernel.dtype)

    return _with_gradient(jnp.matmul, pointwise_bwd)


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
    output axis, each tap's weight gradient a blocked matmul of the matching input and output
    windows, ``_weight_gradient``), so no transposed or reversed copy of the kernel is ever made.
    Products accumulate in float32.
    """
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
            dk[i][j] = _weight_gradient(window, g)
        zero = jnp.zeros(kernel.shape[2:], jnp.float32)
        dk = jnp.stack([jnp.stack([zero if t is None else t for t in row]) for row in dk])
        return dx.astype(x.dtype), dk.astype(kernel.dtype)

    return _with_gradient(conv, tap_conv_bwd)


#: Output pixels per block of the blocked im2col weight gradient (``_dense_conv_fn``): one block's
#: transposed patches (kernel taps x input channels x 1024 floats, 2.4 MB for a 3x3 over 64 channels)
#: stay in this CPU's 2 MB-per-core L2 / 32 MB L3 while the GEMM reads them.
IM2COL_BLOCK = 1024


def _same_padding(size: int, dilation: int) -> tuple[int, int]:
    """XLA's "SAME" padding of a stride-1 convolution: the odd pixel, if any, goes after."""
    total = (size - 1) * dilation
    return total // 2, total - total // 2


@functools.cache
def _dense_conv_fn(kernel_size: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int], padding: str):
    """XLA's own NHWC convolution, with the weight gradient computed as blocked im2col GEMMs.

    The forward pass and the input gradient are exactly what autodiff of the stock op gives. XLA:CPU
    computes the weight gradient as a convolution with batch and feature axes swapped, which needs
    transposed copies of the input and of the incoming gradient and runs its kernel with the batch
    as the innermost axis (the stem's 7x7 over 5 bands: 80 ms at 2x512). A weight gradient is
    patches^T @ grad contracted over pixels, and XLA:CPU's GEMM runs that "transposed-A" product at
    half the speed of a plain one (16384x576x64: 5.9 vs 2.9 ms). So the input is transposed once to
    planar (channel, batch, row, column) order, and a loop over blocks of output rows of one image
    gathers each block's patches already transposed (kernel taps x input channels, pixels) and
    multiplies them with the block's gradient as a plain GEMM (ResNet-34 3x3 weight gradients at
    64 channels: 10 -> 6.5 ms). ``padding`` is "valid", or "same" with stride 1.
    """
    import jax
    from jax import lax
    from jax import numpy as jnp

    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    numbers = ("NHWC", "HWIO", "NHWC")

    def conv(x, kernel):
        return lax.conv_general_dilated(
            x, kernel, strides, padding.upper(), rhs_dilation=dilation, dimension_numbers=numbers
        )

    def weight_gradient(x, grad):
        if padding == "same":
            x = jnp.pad(x, ((0, 0), _same_padding(kh, dh), _same_padding(kw, dw), (0, 0)))
        batch, out_h, out_w, out_ch = grad.shape
        in_ch = x.shape[3]
        planar = jnp.transpose(x, (3, 0, 1, 2))
        rows = _rows_per_block(out_h, IM2COL_BLOCK, row_size=out_w)
        blocks_per_image = out_h // rows
        span = (rows - 1) * sh + (kh - 1) * dh + 1

        def block_gradient(k):
            image, first_row = k // blocks_per_image, (k % blocks_per_image) * rows
            window = lax.dynamic_slice(planar, (0, image, first_row * sh, 0), (in_ch, 1, span, planar.shape[3]))[:, 0]
            patches = jnp.concatenate(
                [
                    window[:, i * dh : i * dh + (rows - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw]
                    .reshape(in_ch, rows * out_w)
                    for i in range(kh)
                    for j in range(kw)
                ],
                axis=0,
            )
            g = lax.dynamic_slice(grad, (image, first_row, 0, 0), (1, rows, out_w, out_ch))
            return jnp.matmul(patches, g.reshape(rows * out_w, out_ch), preferred_element_type=jnp.float32)

        blocks = batch * blocks_per_image
        if blocks == 1:
            total = block_gradient(0)
        else:
            zero = jnp.zeros((kh * kw * in_ch, out_ch), jnp.float32)
            total = lax.fori_loop(0, blocks, lambda k, acc: acc + block_gradient(k), zero)
        return total.reshape(kh, kw, in_ch, out_ch)

    def dense_conv_bwd(residual, grad):
        x, kernel = residual
        (dx,) = jax.vjp(lambda x: conv(x, kernel), x)[1](grad)
        return dx, weight_gradient(x, grad).astype(kernel.dtype)

    return _with_gradient(conv, dense_conv_bwd)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastConv2D(keras.layers.Conv2D):
    """``Conv2D`` that runs its 1x1 and mostly-padding cases as matmuls on XLA:CPU (same weights).

    A 1x1 kernel with stride s reads exactly the pixels ``x[:, ::s, ::s]`` whatever the padding mode
    (neither "valid" nor "same" pads for k=1), so strided 1x1 convolutions are one matmul. A stride-1
    "same" convolution whose dilated taps mostly fall into the zero padding (see
    ``SPARSE_TAP_FRACTION``) runs tap by tap (``_tap_conv_fn``); the choice is made per input shape
    when the graph is traced. Other "valid" convolutions, and "same" ones with stride 1, run XLA's own
    convolution forward and for the input gradient but compute the weight gradient as blocked
    im2col GEMMs (``_dense_conv_fn``). Every other configuration, and every other backend or
    platform, is the stock op.
    """

    def _on_cpu_channels_last(self) -> bool:
        return self.groups == 1 and self.data_format == "channels_last" and _on_jax_cpu()

    def _use_matmul(self) -> bool:
        return tuple(self.kernel_size) == (1, 1) and self._on_cpu_channels_last()

    def _use_im2col_gradient(self) -> bool:
        return self._on_cpu_channels_last() and (
            self.padding == "valid" or (self.padding == "same" and tuple(self.strides) == (1, 1))
        )

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
            return _pointwise_fn()(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel[0, 0]))
        if self._use_taps(inputs.shape):
            conv = _tap_conv_fn(tuple(self.kernel_size), tuple(self.dilation_rate))
            return conv(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel))
        if self._use_im2col_gradient():
            conv = _dense_conv_fn(
                tuple(self.kernel_size), tuple(self.strides), tuple(self.dilation_rate), self.padding
            )
            return conv(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel))
        return super().convolution_op(inputs, kernel)


#: Feature-map rows per step of the depthwise weight gradient's loop (a divisor of the height is used).
DEPTHWISE_ROW_BLOCK = 4


@functools.cache
def _depthwise_fn(kernel_size: tuple[int, int], dilation: tuple[int, int]):
    """A stride-1 "same" NHWC depthwise convolution as shifted multiply-adds, with its own backward.

    Autodiff of the shifted form would keep every shifted window for the backward pass (nine
    copies of the input) and then reduce each product over the whole map, nine passes through main
    memory. Here only the input is kept; the forward and the input gradient (the same stencil over
    the padded gradient with the kernel flipped) are each one fused elementwise loop, and the kernel
    gradient is a loop over blocks of rows that computes all taps of a block while it is in cache
    (kernel gradient of the 2x512 decoder's first depthwise convolution alone: 100 -> 29 ms).
    ``kernel`` is (kh, kw, channels); everything is float32.
    """
    from jax import lax
    from jax import numpy as jnp

    (kh, kw), (dh, dw) = kernel_size, dilation
    ph, pw = (kh - 1) // 2 * dh, (kw - 1) // 2 * dw

    def pad(x):
        return jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

    def stencil(padded, kernel, height, width, flip):
        total = None
        for i in range(kh):
            for j in range(kw):
                window = padded[:, i * dh : i * dh + height, j * dw : j * dw + width, :]
                tap = kernel[kh - 1 - i, kw - 1 - j] if flip else kernel[i, j]
                total = window * tap if total is None else total + window * tap
        return total

    def depthwise_forward(x, kernel):
        return stencil(pad(x), kernel, x.shape[1], x.shape[2], flip=False)

    def depthwise_bwd(residual, grad):
        x, kernel = residual
        height, width = x.shape[1], x.shape[2]
        dx = stencil(pad(grad), kernel, height, width, flip=True)
        padded = pad(x)
        rows = _rows_per_block(height, DEPTHWISE_ROW_BLOCK)

        def add_block(k, acc):
            xs = lax.dynamic_slice_in_dim(padded, k * rows, rows + 2 * ph, axis=1)
            gs = lax.dynamic_slice_in_dim(grad, k * rows, rows, axis=1)
            # Each tap's sum over the block's pixels as a (1 x pixels) @ (pixels x channels) product:
            # the GEMM kernel sums faster than XLA:CPU's reduction here (A/B in PERFORMANCE.md).
            pixels = gs.size // gs.shape[-1]
            ones = jnp.ones((1, pixels), jnp.float32)
            taps = [
                jnp.matmul(ones, (xs[:, i * dh : i * dh + rows, j * dw : j * dw + width, :] * gs).reshape(pixels, -1))
                for i in range(kh)
                for j in range(kw)
            ]
            return acc + jnp.concatenate(taps, axis=0)

        zero = jnp.zeros((kh * kw, x.shape[3]), jnp.float32)
        dk = lax.fori_loop(0, height // rows, add_block, zero)
        return dx, dk.reshape(kernel.shape)

    return _with_gradient(depthwise_forward, depthwise_bwd)


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
        kernel = ops.convert_to_tensor(ops.cast(self.kernel, "float32"))
        inputs = ops.convert_to_tensor(ops.cast(inputs, "float32"))
        depthwise = _depthwise_fn(tuple(self.kernel_size), tuple(self.dilation_rate))
        outputs = depthwise(inputs, kernel[..., 0])
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
