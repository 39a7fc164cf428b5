"""Small serialisable layers of the glacier network.

Two groups live here:

* helpers the functional graph needs but Keras has no layer for (input standardisation with
  no-data handling, the [max, mean] channel summary of CBAM's spatial attention, broadcasting the
  ASPP image-pool branch back to the feature map's size);
* drop-in ``Conv2D`` / ``DepthwiseConv2D`` / ``MaxPooling2D`` subclasses that keep the stock weight
  layout and config (so saving, loading and the PyTorch conversion treat them exactly like the stock
  layers) and, when traced for XLA:CPU, call the matching kernel of :mod:`keras_glacier.xla_cpu`
  (same numbers, a form XLA:CPU runs several times faster). Everywhere else, and with
  ``KERAS_GLACIER_KERNELS=stock``, they are the stock layers.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_glacier import xla_cpu
from keras_glacier.constants import OUTPUT_STRIDE

__all__ = [
    "BandNormalization",
    "ChannelMaxMean",
    "FastConv2D",
    "FastDepthwiseConv2D",
    "FastMaxPooling2D",
    "SpatialBroadcast",
]

PACKAGE = "keras_glacier"


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

    def statistics(self) -> dict[str, list[float]]:
        """The statistics in use: the weights' values once built (loaded weights included), else the arguments."""
        if not self.built:
            return {"lo": self.lo_init, "hi": self.hi_init, "mean": self.mean_init, "std": self.std_init}
        keys = ("lo", "hi", "mean", "std")
        return {key: [float(v) for v in ops.convert_to_numpy(getattr(self, key))] for key in keys}

    def get_config(self):
        config = super().get_config()
        config.update(self.statistics())
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastConv2D(keras.layers.Conv2D):
    """``Conv2D`` that calls ``xla_cpu.conv2d_kernel`` on XLA:CPU (1x1 as matmuls, sparse dilated
    convolutions tap by tap, blocked weight gradients); the stock op elsewhere (same weights)."""

    def convolution_op(self, inputs, kernel):
        fast = None
        if xla_cpu.enabled():
            fast = xla_cpu.conv2d_kernel(
                inputs.shape, self.kernel_size, self.strides, self.padding, self.dilation_rate, self.groups,
                self.data_format,
            )
        if fast is None:
            return super().convolution_op(inputs, kernel)
        return fast(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` that calls ``xla_cpu.depthwise_kernel`` (shifted multiply-adds) on XLA:CPU for
    the stride-1 "same" multiplier-1 odd-kernel case; the stock op elsewhere (same weights, same result)."""

    def call(self, inputs):
        fast = None
        if xla_cpu.enabled():
            fast = xla_cpu.depthwise_kernel(
                self.kernel_size, self.strides, self.padding, self.depth_multiplier, self.dilation_rate,
                self.data_format,
            )
        if fast is None:
            return super().call(inputs)
        # Accumulate the taps in float32 even under a bfloat16 policy (XLA:CPU emulates bf16 anyway).
        kernel = ops.convert_to_tensor(ops.cast(self.kernel, "float32"))
        outputs = fast(ops.convert_to_tensor(ops.cast(inputs, "float32")), kernel[..., 0])
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, "float32")
        outputs = ops.cast(outputs, self.compute_dtype)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastMaxPooling2D(keras.layers.MaxPooling2D):
    """``MaxPooling2D`` that calls ``xla_cpu.max_pool_kernel`` (slice maxima, the gradient to the first
    maximum as in PyTorch) on XLA:CPU for the "valid" channels-last case; the stock pooling elsewhere."""

    def call(self, inputs):
        fast = None
        if xla_cpu.enabled():
            fast = xla_cpu.max_pool_kernel(self.pool_size, self.strides, self.padding, self.data_format)
        if fast is None:
            return super().call(inputs)
        return fast(inputs)
