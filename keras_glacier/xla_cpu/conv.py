"""Dense 2-D convolutions (groups 1, NHWC) for XLA:CPU: 1x1 as matmuls, sparse dilated ones tap by
tap, and the rest with XLA's own forward but a blocked im2col weight gradient.

XLA:CPU lowers 1x1 convolutions to a slow generic loop, computes every tap of a dilated convolution
even where it only reads zero padding, and computes a weight gradient as a convolution with batch and
feature axes swapped (transposed copies, batch innermost). Matmuls over the same numbers avoid all
three. :func:`conv2d_path` says which form a configuration takes, :func:`conv2d_kernel` returns it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from keras_glacier.xla_cpu import tuning
from keras_glacier.xla_cpu.gradients import weight_gradient, with_gradient

__all__ = [
    "conv2d_kernel",
    "conv2d_path",
    "dense_conv_fn",
    "pointwise_fn",
    "tap_conv_fn",
    "tap_windows",
    "valid_tap_fraction",
]


@functools.cache
def pointwise_fn():
    """``x @ kernel`` over the last axis (a 1x1 convolution) whose weight gradient is blocked."""
    from jax import numpy as jnp

    def pointwise_bwd(residual, grad):
        x, kernel = residual
        dx = jnp.matmul(grad, kernel.T).astype(x.dtype)
        return dx, weight_gradient(x, grad).astype(kernel.dtype)

    return with_gradient(jnp.matmul, pointwise_bwd)


def tap_windows(height: int, width: int, kernel_size, dilation):
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


def valid_tap_fraction(height: int, width: int, kernel_size, dilation) -> float:
    """The fraction of a "same" convolution's tap x pixel products that read the image, not the padding."""
    area = sum((r1 - r0) * (c1 - c0) for *_, r0, r1, c0, c1 in tap_windows(height, width, kernel_size, dilation))
    return area / (kernel_size[0] * kernel_size[1] * height * width)


@functools.cache
def tap_conv_fn(kernel_size: tuple[int, int], dilation: tuple[int, int]):
    """A stride-1 "same" NHWC convolution as one matmul per kernel tap over the pixels it reaches.

    Taps that only ever read zero padding (a dilation as large as the feature map, as in the ASPP at
    stride 16) are skipped, and the others only multiply the rows and columns that read the image,
    which XLA's convolution does not do. The backward pass is written the same way (each tap's input
    gradient is a matmul with the tap's (in, out) matrix contracted on its output axis, each tap's
    weight gradient a blocked matmul of the matching input and output windows), so no transposed or
    reversed copy of the kernel is ever made. Products accumulate in float32.
    """
    from jax import lax
    from jax import numpy as jnp

    def conv(x, kernel):
        height, width = x.shape[1], x.shape[2]
        total = None
        for i, j, di, dj, r0, r1, c0, c1 in tap_windows(height, width, kernel_size, dilation):
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
        for i, j, di, dj, r0, r1, c0, c1 in tap_windows(height, width, kernel_size, dilation):
            g = grad[:, r0:r1, c0:c1, :]
            part = lax.dot_general(g, kernel[i, j], (((3,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            part = jnp.pad(part, ((0, 0), (r0 + di, height - r1 - di), (c0 + dj, width - c1 - dj), (0, 0)))
            dx = part if dx is None else dx + part
            window = x[:, r0 + di : r1 + di, c0 + dj : c1 + dj, :]
            dk[i][j] = weight_gradient(window, g)
        zero = jnp.zeros(kernel.shape[2:], jnp.float32)
        dk = jnp.stack([jnp.stack([zero if t is None else t for t in row]) for row in dk])
        return dx.astype(x.dtype), dk.astype(kernel.dtype)

    return with_gradient(conv, tap_conv_bwd)


def _same_padding(size: int, dilation: int) -> tuple[int, int]:
    """XLA's "SAME" padding of a stride-1 convolution: the odd pixel, if any, goes after."""
    total = (size - 1) * dilation
    return total // 2, total - total // 2


@functools.cache
def dense_conv_fn(kernel_size: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int], padding: str):
    """XLA's own NHWC convolution, with the weight gradient computed as blocked im2col GEMMs.

    The forward pass and the input gradient are exactly what autodiff of the stock op gives. A weight
    gradient is patches^T @ grad contracted over pixels, and XLA:CPU's GEMM runs that "transposed-A"
    product at about half the speed of a plain one. So the input is transposed once to planar
    (channel, batch, row, column) order, and a loop over blocks of output rows of one image gathers
    each block's patches already transposed (kernel taps x input channels, pixels) and multiplies
    them with the block's gradient as a plain GEMM. ``padding`` is "valid", or "same" with stride 1.
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

    def im2col_weight_gradient(x, grad):
        if padding == "same":
            x = jnp.pad(x, ((0, 0), _same_padding(kh, dh), _same_padding(kw, dw), (0, 0)))
        batch, out_h, out_w, out_ch = grad.shape
        in_ch = x.shape[3]
        planar = jnp.transpose(x, (3, 0, 1, 2))
        rows = tuning.rows_per_block(out_h, tuning.IM2COL_BLOCK, row_size=out_w)
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
        return dx, im2col_weight_gradient(x, grad).astype(kernel.dtype)

    return with_gradient(conv, dense_conv_bwd)


def conv2d_path(input_shape, kernel_size, strides, padding, dilation_rate, groups=1, data_format="channels_last"):
    """Which kernel a ``Conv2D`` configuration takes on XLA:CPU: "matmul", "taps", "im2col" or None (stock).

    A 1x1 kernel with stride s reads exactly the pixels ``x[:, ::s, ::s]`` whatever the padding mode
    (neither "valid" nor "same" pads for k=1), so strided 1x1 convolutions are one matmul. A stride-1
    "same" convolution with an odd kernel whose dilated taps mostly read zero padding
    (``tuning.SPARSE_TAP_FRACTION``) goes tap by tap; that depends on the input's height and width,
    known when the graph is traced. Other "valid" ones, and "same" ones with stride 1, get the im2col
    weight gradient. Grouped and channels-first convolutions keep the stock op.
    """
    if groups != 1 or data_format != "channels_last":
        return None
    kernel_size, strides, dilation = tuple(kernel_size), tuple(strides), tuple(dilation_rate)
    if kernel_size == (1, 1):
        return "matmul"
    height, width = input_shape[1], input_shape[2]
    if (
        height is not None
        and width is not None
        and kernel_size[0] % 2 == 1
        and kernel_size[1] % 2 == 1
        and strides == (1, 1)
        and padding == "same"
        and valid_tap_fraction(int(height), int(width), kernel_size, dilation) <= tuning.SPARSE_TAP_FRACTION
    ):
        return "taps"
    if padding == "valid" or (padding == "same" and strides == (1, 1)):
        return "im2col"
    return None


def conv2d_kernel(input_shape, kernel_size, strides, padding, dilation_rate, groups=1,
                  data_format="channels_last") -> Callable | None:
    """``f(inputs, kernel)`` computing the convolution as :func:`conv2d_path` chooses, or None for the stock op."""
    path = conv2d_path(input_shape, kernel_size, strides, padding, dilation_rate, groups, data_format)
    kernel_size, strides, dilation = tuple(kernel_size), tuple(strides), tuple(dilation_rate)
    if path == "matmul":
        sh, sw = strides

        def pointwise(inputs, kernel):
            if (sh, sw) != (1, 1):
                inputs = inputs[:, ::sh, ::sw, :]
            return pointwise_fn()(inputs, kernel[0, 0])

        return pointwise
    if path == "taps":
        return tap_conv_fn(kernel_size, dilation)
    if path == "im2col":
        return dense_conv_fn(kernel_size, strides, dilation, padding)
    return None
