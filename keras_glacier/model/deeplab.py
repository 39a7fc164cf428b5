"""DeepLabV3+ (ResNet-34 encoder, ASPP with CBAM) taking raw bands and returning float32 logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import layers

from keras_glacier.model.aspp import aspp
from keras_glacier.model.layers import BandNormalization, FastConv2D, FastDepthwiseConv2D
from keras_glacier.model.resnet import batch_norm, build_resnet34_backbone

LOW_CHANNELS = 48
DECODER_CHANNELS = 256
STAT_KEYS = ("lo", "hi", "mean", "std")


def default_stats(num_bands: int) -> dict[str, list[float]]:
    """Statistics under which normalisation only clips to [0, 1]: useful before real ones exist."""
    return {"lo": [0.0] * num_bands, "hi": [1.0] * num_bands, "mean": [0.0] * num_bands, "std": [1.0] * num_bands}


def _checked_stats(stats: Mapping[str, Sequence[float]] | None, num_bands: int) -> dict[str, list[float]]:
    if stats is None:
        return default_stats(num_bands)
    missing = [key for key in STAT_KEYS if key not in stats]
    if missing:
        raise ValueError(f"band statistics lack {', '.join(missing)} (need {', '.join(STAT_KEYS)})")
    out = {key: [float(v) for v in stats[key]] for key in STAT_KEYS}
    for key, values in out.items():
        if len(values) != num_bands:
            raise ValueError(f"band statistics '{key}' has {len(values)} entries but num_bands is {num_bands}")
    return out


def _separable(x, filters: int, name: str):
    x = FastDepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}.depthwise")(x)
    x = FastConv2D(filters, 1, use_bias=False, name=f"{name}.pointwise")(x)
    x = batch_norm(f"{name}.bn")(x)
    return layers.ReLU(name=f"{name}.relu")(x)


def build_deeplab(
    num_bands: int = 5,
    stats: Mapping[str, Sequence[float]] | None = None,
    aspp_rates: Sequence[int] = (6, 12, 18),
    dropout: float = 0.1,
    reduction: int = 16,
    name: str = "attention_deeplabv3plus",
) -> keras.Model:
    """Builds the network of SPEC.md: raw (B, H, W, num_bands) bands -> (B, H, W, 1) float32 logits.

    ``stats`` is the stats.json dictionary (extra keys ignored); None gives statistics that only clip
    the input to [0, 1], for tests and for models whose weights and buffers are loaded afterwards.
    """
    stats = _checked_stats(stats, num_bands)
    inputs = keras.Input((None, None, num_bands), name="bands", dtype="float32")
    x = BandNormalization(**stats, name="normalize")(inputs)
    low, high = build_resnet34_backbone(num_bands)(x)

    x = aspp(high, rates=tuple(aspp_rates), dropout=dropout, reduction=reduction)

    low = FastConv2D(LOW_CHANNELS, 1, use_bias=False, name="decoder.low_proj.conv")(low)
    low = batch_norm("decoder.low_proj.bn")(low)
    low = layers.ReLU(name="decoder.low_proj.relu")(low)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder.upsample")(x)
    x = layers.Concatenate(axis=-1, name="decoder.concat")([x, low])
    x = _separable(x, DECODER_CHANNELS, "decoder.sep1")
    x = _separable(x, DECODER_CHANNELS, "decoder.sep2")

    x = FastConv2D(1, 1, use_bias=True, name="head")(x)
    # Upsampling one channel in float32 costs nothing and keeps the logits' sub-pixel detail.
    x = layers.UpSampling2D(4, interpolation="bilinear", dtype="float32", name="upsample")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
