"""Block sizes and thresholds of the XLA:CPU kernels, and the divisor helpers that apply them.

The kernels read these as ``tuning.NAME`` when they are traced, so a test can shrink a block to make
a loop run several times. The figures behind each value are in benchmarks/PERFORMANCE.md.
"""

from __future__ import annotations

__all__ = [
    "DEPTHWISE_ROW_BLOCK",
    "IM2COL_BLOCK",
    "SPARSE_TAP_FRACTION",
    "WEIGHT_GRADIENT_BLOCK",
    "block_size",
    "rows_per_block",
]

#: Pixels per block of a blocked weight gradient (``gradients.weight_gradient``): a block of a
#: 300-channel float32 operand is ~5 MB, so its transposed copy is made in cache rather than across
#: main memory.
WEIGHT_GRADIENT_BLOCK = 4096

#: Output pixels per block of the blocked im2col weight gradient (``conv.dense_conv_fn``): one block's
#: transposed patches (kernel taps x input channels x 1024 floats, 2.4 MB for a 3x3 over 64 channels)
#: stay in a 2 MB-per-core L2 / 32 MB L3 while the GEMM reads them.
IM2COL_BLOCK = 1024

#: A stride-1 "same" convolution runs tap by tap when at most this fraction of its kernel-tap x pixel
#: products read the image rather than the zero padding: the ASPP's large rates on small maps gain,
#: layer4's rate-2 convolutions (fraction 0.77-0.88) do not (crossover measured, PERFORMANCE.md).
SPARSE_TAP_FRACTION = 0.6

#: Feature-map rows per step of the depthwise weight gradient's loop (a divisor of the height is used).
DEPTHWISE_ROW_BLOCK = 4


def rows_per_block(rows: int, limit: int, row_size: int = 1) -> int:
    """The most rows (a divisor of ``rows``, at least 1) whose ``row_size`` elements stay within ``limit``."""
    return max((r for r in range(1, rows + 1) if rows % r == 0 and r * row_size <= limit), default=1)


def block_size(total: int, target: int) -> int:
    """The largest divisor of ``total`` in [target / 4, target]; ``total`` itself when none (or small)."""
    if total <= target:
        return total
    for size in range(target, target // 4 - 1, -1):
        if total % size == 0:
            return size
    return total
