"""The glacier segmentation network (Keras 3, channels-last) and its building blocks."""

from keras_glacier.model.aspp import aspp
from keras_glacier.model.attention import cbam
from keras_glacier.model.deeplab import CONFIG_KEYS, GlacierDeepLab, build_deeplab, default_stats
from keras_glacier.model.ensemble import GlacierEnsemble, MeanProbability
from keras_glacier.model.layers import (
    BandNormalization,
    ChannelMaxMean,
    FastConv2D,
    FastDepthwiseConv2D,
    FastMaxPooling2D,
    SpatialBroadcast,
)
from keras_glacier.model.resnet import RESNET_STAGES, build_resnet_backbone

__all__ = [
    "CONFIG_KEYS",
    "RESNET_STAGES",
    "BandNormalization",
    "ChannelMaxMean",
    "FastConv2D",
    "FastDepthwiseConv2D",
    "FastMaxPooling2D",
    "GlacierDeepLab",
    "GlacierEnsemble",
    "MeanProbability",
    "SpatialBroadcast",
    "aspp",
    "build_deeplab",
    "build_resnet_backbone",
    "cbam",
    "default_stats",
]
