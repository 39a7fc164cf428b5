"""Kernels that make the network's training step fast on XLA:CPU, and the switch that turns them on.

Each kernel computes exactly what a stock Keras op computes (same weights, same values, gradients
equal to float rounding) in a form XLA:CPU runs well: matmuls instead of 1x1 and sparse dilated
convolutions, blocked weight gradients, shifted multiply-adds for depthwise convolutions, slice
maxima for the max-pool. The model's layers ask :func:`enabled` when traced and call a kernel of
this package only on XLA:CPU (and unless ``KERAS_GLACIER_KERNELS=stock``); on GPU and TPU the stock
ops run. This package knows nothing of the model and never imports it.
"""

from keras_glacier.xla_cpu.conv import conv2d_kernel, conv2d_path, valid_tap_fraction
from keras_glacier.xla_cpu.depthwise import depthwise_kernel
from keras_glacier.xla_cpu.pool import max_pool_kernel
from keras_glacier.xla_cpu.switch import KERNELS_ENV, MODES, enabled, kernels, kernels_mode, on_xla_cpu, set_kernels

__all__ = [
    "KERNELS_ENV",
    "MODES",
    "conv2d_kernel",
    "conv2d_path",
    "depthwise_kernel",
    "enabled",
    "kernels",
    "kernels_mode",
    "max_pool_kernel",
    "on_xla_cpu",
    "set_kernels",
    "valid_tap_fraction",
]
