"""Atrous spatial pyramid pooling with a CBAM after every branch (DeepLabV3+ encoder head)."""

from __future__ import annotations

from keras import layers

from keras_glacier.constants import ASPP_RATES
from keras_glacier.model.attention import cbam
from keras_glacier.model.layers import FastConv2D, SpatialBroadcast
from keras_glacier.model.resnet import batch_norm

__all__ = ["ASPP_CHANNELS", "aspp"]

ASPP_CHANNELS = 256


def _conv_bn_relu_cbam(x, conv, name: str, reduction: int):
    x = conv(x)
    x = batch_norm(f"{name}.bn")(x)
    x = layers.ReLU(name=f"{name}.relu")(x)
    return cbam(x, f"{name}.cbam", reduction)


def aspp(
    x,
    rates=ASPP_RATES,
    dropout: float = 0.1,
    reduction: int = 16,
    name: str = "aspp",
    channels: int = ASPP_CHANNELS,
):
    """Branches b0 (1x1), b1..b3 (3x3 dilated by ``rates``) and an image pool, concatenated in that order."""
    if len(rates) != 3:
        raise ValueError(f"ASPP needs exactly three atrous rates, got {tuple(rates)}")
    branches = [
        _conv_bn_relu_cbam(
            x, FastConv2D(channels, 1, use_bias=False, name=f"{name}.b0.conv"), f"{name}.b0", reduction
        )
    ]
    for i, rate in enumerate(rates, start=1):
        conv = FastConv2D(
            channels, 3, padding="same", dilation_rate=int(rate), use_bias=False, name=f"{name}.b{i}.conv"
        )
        branches.append(_conv_bn_relu_cbam(x, conv, f"{name}.b{i}", reduction))

    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool.avg")(x)
    pooled = _conv_bn_relu_cbam(
        pooled, FastConv2D(channels, 1, use_bias=False, name=f"{name}.pool.conv"), f"{name}.pool", reduction
    )
    branches.append(SpatialBroadcast(name=f"{name}.pool.broadcast")([pooled, x]))

    y = layers.Concatenate(axis=-1, name=f"{name}.concat")(branches)
    y = FastConv2D(channels, 1, use_bias=False, name=f"{name}.project.conv")(y)
    y = batch_norm(f"{name}.project.bn")(y)
    y = layers.ReLU(name=f"{name}.project.relu")(y)
    return layers.Dropout(dropout, name=f"{name}.project.dropout")(y)
