"""CBAM (channel then spatial attention) as a functional block.

The two Dense layers of the channel attention are shared between the average- and max-pooled
descriptors, exactly like the PyTorch twin's single MLP, so each path owns one set of weights.
"""

from __future__ import annotations

from keras import layers

from keras_glacier.model.layers import ChannelMaxMean, FastConv2D

__all__ = ["SPATIAL_KERNEL", "cbam"]

#: Kernel size of the spatial-attention convolution (PyTorch padding = 3).
SPATIAL_KERNEL = 7


def cbam(x, name: str, reduction: int = 16):
    """Applies CBAM to ``x`` (B, H, W, C); weighted layers are ``{name}.ca.fc1/fc2`` and ``{name}.sa.conv``."""
    channels = x.shape[-1]
    hidden = max(channels // reduction, 1)
    fc1 = layers.Dense(hidden, use_bias=True, name=f"{name}.ca.fc1")
    fc2 = layers.Dense(channels, use_bias=True, name=f"{name}.ca.fc2")
    relu = layers.ReLU(name=f"{name}.ca.relu")

    avg = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.ca.avg")(x)
    mx = layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}.ca.max")(x)
    attn = layers.Add(name=f"{name}.ca.add")([fc2(relu(fc1(avg))), fc2(relu(fc1(mx)))])
    attn = layers.Activation("sigmoid", name=f"{name}.ca.sigmoid")(attn)
    x = layers.Multiply(name=f"{name}.ca.scale")([x, attn])

    summary = ChannelMaxMean(name=f"{name}.sa.pool")(x)
    mask = FastConv2D(1, SPATIAL_KERNEL, padding="same", use_bias=False, name=f"{name}.sa.conv")(summary)
    mask = layers.Activation("sigmoid", name=f"{name}.sa.sigmoid")(mask)
    return layers.Multiply(name=f"{name}.sa.scale")([x, mask])
