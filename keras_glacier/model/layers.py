"""Small serialisable layers of the glacier network.

Two groups live here:

* helpers the functional graph needs but Keras has no layer for (input standardisation with
  no-data handling, the [max, mean] channel summary of CBAM's spatial attention, broadcasting the
  ASPP image-pool branch back to the feature map's size);
* drop-in ``Conv2D`` / ``DepthwiseConv2D`` subclasses that keep the stock weight layout (so saving,
  loading and the PyTorch conversion treat them exactly like the stock layers) but, when traced by
  JAX for the CPU, express the convolution as plain slicing and matmuls. XLA:CPU lowers grouped
  (depthwise) convolutions and 1x1 convolutions to slow generic loops; shifted multiply-adds and a
  GEMM are the same arithmetic and several times faster there. On any other backend or platform the
  stock implementation runs.
"""

from __future__ import annotations

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


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastConv2D(keras.layers.Conv2D):
    """``Conv2D`` whose 1x1 case runs as a matmul on XLA:CPU (same weights, same result).

    A 1x1 kernel with stride s reads exactly the pixels ``x[:, ::s, ::s]`` whatever the padding mode
    (neither "valid" nor "same" pads for k=1), so strided 1x1 convolutions are handled too.
    """

    def _use_matmul(self) -> bool:
        return (
            tuple(self.kernel_size) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
            and _on_jax_cpu()
        )

    def convolution_op(self, inputs, kernel):
        if not self._use_matmul():
            return super().convolution_op(inputs, kernel)
        sh, sw = self.strides
        if (sh, sw) != (1, 1):
            inputs = inputs[:, ::sh, ::sw, :]
        return ops.matmul(inputs, kernel[0, 0])


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
