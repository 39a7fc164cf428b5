"""The glacier segmentation network (Keras 3, channels-last) and its building blocks."""

from keras_glacier.model.aspp import aspp
from keras_glacier.model.attention import cbam
from keras_glacier.model.deeplab import build_deeplab, default_stats
from keras_glacier.model.layers import (
    BandNormalization,
    ChannelMaxMean,
    FastConv2D,
    FastDepthwiseConv2D,
    SpatialBroadcast,
)
from keras_glacier.model.resnet import RESNET34_STAGES, build_resnet34_backbone

__all__ = [
    "RESNET34_STAGES",
    "BandNormalization",
    "ChannelMaxMean",
    "FastConv2D",
    "FastDepthwiseConv2D",
    "SpatialBroadcast",
    "aspp",
    "build_deeplab",
    "build_resnet34_backbone",
    "cbam",
    "default_stats",
]
