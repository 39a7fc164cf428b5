"""Max-pooling ("valid", NHWC) as a maximum of shifted strided slices, with PyTorch's gradient.

XLA:CPU differentiates ``reduce_window(max)`` through a variadic reduce-window over (value, index)
pairs plus materialised iotas and a scatter, several times the cost of the pooling itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["first_max_pool_fn", "max_pool_kernel"]


@functools.cache
def first_max_pool_fn(pool: tuple[int, int], strides: tuple[int, int]):
    """A JAX max-pool ("valid", NHWC) as a max over shifted strided slices, with torch's gradient.

    The forward keeps, per output pixel, the index of the first window element that holds the maximum
    (row-major order, NaN wins, as in PyTorch's CPU kernel); the backward sends the whole incoming
    gradient to that element, by scattering each tap's share back with an interior-padded
    ``lax.pad``. Values are bit-identical to ``reduce_window``; gradients equal PyTorch's
    ``max_pool2d`` backward (ties go to the first maximum, never split).
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


def max_pool_kernel(pool_size, strides, padding, data_format="channels_last") -> Callable | None:
    """``f(inputs)`` for "valid" channels-last max-pooling, else None (the stock op)."""
    if padding == "valid" and data_format == "channels_last":
        return first_max_pool_fn(tuple(pool_size), tuple(strides))
    return None
