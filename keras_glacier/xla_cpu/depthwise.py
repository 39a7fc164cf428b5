"""Depthwise 2-D convolution (stride 1, "same", odd kernel) as shifted multiply-adds for XLA:CPU.

XLA:CPU lowers grouped (depthwise) convolutions to a slow generic loop; the same stencil written as
shifted multiply-adds is one fused elementwise loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from keras_glacier.xla_cpu import tuning
from keras_glacier.xla_cpu.gradients import with_gradient

__all__ = ["depthwise_fn", "depthwise_kernel"]


@functools.cache
def depthwise_fn(kernel_size: tuple[int, int], dilation: tuple[int, int]):
    """A stride-1 "same" NHWC depthwise convolution as shifted multiply-adds, with its own backward.

    Autodiff of the shifted form would keep every shifted window for the backward pass (nine copies
    of the input) and then reduce each product over the whole map, nine passes through main memory.
    Here only the input is kept; the forward and the input gradient (the same stencil over the padded
    gradient with the kernel flipped) are each one fused elementwise loop, and the kernel gradient is
    a loop over blocks of rows that computes all taps of a block while it is in cache.
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
        rows = tuning.rows_per_block(height, tuning.DEPTHWISE_ROW_BLOCK)

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

    return with_gradient(depthwise_forward, depthwise_bwd)


def depthwise_kernel(kernel_size, strides, padding, depth_multiplier, dilation_rate,
                     data_format="channels_last") -> Callable | None:
    """``f(inputs, kernel (kh, kw, channels))`` in float32 for the stride-1 "same" multiplier-1 case
    with an odd kernel (any dilation), else None (the stock op)."""
    kh, kw = kernel_size
    if (
        kh % 2 == 1
        and kw % 2 == 1
        and tuple(strides) == (1, 1)
        and padding == "same"
        and depth_multiplier == 1
        and data_format == "channels_last"
    ):
        return depthwise_fn(tuple(kernel_size), tuple(dilation_rate))
    return None
