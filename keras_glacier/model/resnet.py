"""ResNet-18 / ResNet-34 encoders with torchvision's layer names and smp's dilated last stage.

Layer names are the PyTorch module paths (minus the ``backbone.`` prefix) so that converting weights
to the PyTorch twin is a lookup, not a guess. Padding is explicit wherever PyTorch's symmetric
padding differs from Keras' "same" (strided convolutions and the stem max-pool).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_glacier.constants import DEFAULT_ENCODER, ENCODERS
from keras_glacier.model.layers import FastConv2D, FastMaxPooling2D

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "RESNET_STAGES",
    "basic_block",
    "batch_norm",
    "build_resnet_backbone",
    "check_encoder",
    "conv3x3",
]

#: (stage name, channels, stride of the first block, dilation) of every encoder; the number of
#: BasicBlocks per stage is the encoder's (``constants.ENCODERS``). layer4 keeps stride 1 and dilates
#: by 2 instead (output stride 16, as smp's make_dilated).
RESNET_STAGES = (
    ("layer1", 64, 1, 1),
    ("layer2", 128, 2, 1),
    ("layer3", 256, 2, 1),
    ("layer4", 512, 1, 2),
)

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1


def batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def conv3x3(x, filters: int, stride: int, dilation: int, name: str):
    """3x3 convolution with PyTorch's padding = dilation."""
    if stride == 1:
        return FastConv2D(
            filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=name
        )(x)
    x = layers.ZeroPadding2D(dilation, name=f"{name}.pad")(x)
    return FastConv2D(
        filters, 3, strides=stride, padding="valid", dilation_rate=dilation, use_bias=False, name=name
    )(x)


def basic_block(x, filters: int, stride: int, dilation: int, downsample: bool, name: str):
    identity = x
    out = conv3x3(x, filters, stride, dilation, f"{name}.conv1")
    out = batch_norm(f"{name}.bn1")(out)
    out = layers.ReLU(name=f"{name}.relu1")(out)
    out = conv3x3(out, filters, 1, dilation, f"{name}.conv2")
    out = batch_norm(f"{name}.bn2")(out)
    if downsample:
        identity = FastConv2D(
            filters, 1, strides=stride, padding="valid", use_bias=False, name=f"{name}.downsample.0"
        )(x)
        identity = batch_norm(f"{name}.downsample.1")(identity)
    out = layers.Add(name=f"{name}.add")([out, identity])
    return layers.ReLU(name=f"{name}.relu2")(out)


def check_encoder(encoder: str) -> str:
    """``encoder`` if it names one of ``constants.ENCODERS``, else ValueError listing them."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    return encoder


def build_resnet_backbone(num_bands: int = 5, encoder: str = DEFAULT_ENCODER, output_stride: int = 16) -> keras.Model:
    """Functional ResNet mapping (B, H, W, num_bands) to [low (stride 4, 64 ch), high (stride 16, 512 ch)].

    ``encoder``: resnet18 or resnet34 (same stages and channels, fewer blocks per stage). Only output
    stride 16 exists, because the PyTorch twin and the spec fix layer4's dilation.
    """
    blocks_per_stage = ENCODERS[check_encoder(encoder)]
    if output_stride != 16:
        raise ValueError(f"only output_stride=16 is supported (got {output_stride})")
    if num_bands < 1:
        raise ValueError(f"num_bands must be positive (got {num_bands})")
    inputs = keras.Input((None, None, num_bands), name="bands")
    x = layers.ZeroPadding2D(3, name="conv1.pad")(inputs)
    x = FastConv2D(64, 7, strides=2, padding="valid", use_bias=False, name="conv1")(x)
    x = batch_norm("bn1")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.ZeroPadding2D(1, name="maxpool.pad")(x)
    x = FastMaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)

    in_channels = 64
    low = None
    for (stage, filters, stride, dilation), blocks in zip(RESNET_STAGES, blocks_per_stage):
        for k in range(blocks):
            block_stride = stride if k == 0 else 1
            downsample = k == 0 and (block_stride != 1 or in_channels != filters)
            x = basic_block(x, filters, block_stride, dilation, downsample, f"{stage}.{k}")
            in_channels = filters
        if stage == "layer1":
            low = x
    return keras.Model(inputs, [low, x], name="backbone")
