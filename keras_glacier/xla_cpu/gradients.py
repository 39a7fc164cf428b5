"""Custom-gradient plumbing shared by the kernels: ``with_gradient`` and the blocked weight gradient."""

from __future__ import annotations

from keras_glacier.xla_cpu import tuning

__all__ = ["weight_gradient", "with_gradient"]


def weight_gradient(x, grad):
    """sum over all pixels of outer(x, grad): a convolution's weight gradient, (in, out) in float32.

    XLA:CPU's GEMM wants the contracted (pixel) axis innermost, so for the one big product it makes a
    transposed copy of an operand, and fuses that copy into whatever produced the operand (the
    BatchNorm backward, the depthwise forward): an elementwise loop that then writes across memory,
    several times slower than the arithmetic itself. Summing blocks of pixels in a loop keeps each
    transposed copy small and in cache.
    """
    from jax import lax
    from jax import numpy as jnp

    x = x.reshape(-1, x.shape[-1])
    grad = grad.reshape(-1, grad.shape[-1])
    total = x.shape[0]
    block = tuning.block_size(total, tuning.WEIGHT_GRADIENT_BLOCK)
    contract = (((0,), (0,)), ((), ()))
    if block == total:
        return lax.dot_general(x, grad, contract, preferred_element_type=jnp.float32)

    def add_block(k, acc):
        xs = lax.dynamic_slice_in_dim(x, k * block, block, axis=0)
        gs = lax.dynamic_slice_in_dim(grad, k * block, block, axis=0)
        return acc + lax.dot_general(xs, gs, contract, preferred_element_type=jnp.float32)

    zero = jnp.zeros((x.shape[1], grad.shape[1]), jnp.float32)
    return lax.fori_loop(0, total // block, add_block, zero)


def with_gradient(forward, backward):
    """``forward(x, kernel)`` as a JAX function whose gradient is ``backward((x, kernel), grad) -> (dx, dkernel)``.

    The residuals are just the two inputs: every backward pass here recomputes what it needs from them.
    """
    import jax

    function = jax.custom_vjp(forward)
    function.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)), backward)
    return function
