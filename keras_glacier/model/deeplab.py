"""DeepLabV3+ (ResNet-18 or ResNet-34 encoder, ASPP with CBAM) taking raw bands and returning float32 logits.

``GlacierDeepLab`` is a ``keras.Model`` built functionally in its constructor (as keras-hub builds its
backbones), so it is an ordinary functional graph with ordinary layer names (the PyTorch module paths)
and at the same time a class whose ``get_config`` says what the network is: its bands, classes,
decision threshold, encoder, ASPP rates, CBAM reduction, dropout, output stride and input statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import layers

from keras_glacier.constants import ASPP_RATES, DEFAULT_ENCODER, OUTPUT_STRIDE, PHASE2_VALUES
from keras_glacier.model.aspp import aspp
from keras_glacier.model.layers import PACKAGE, BandNormalization, FastConv2D, FastDepthwiseConv2D
from keras_glacier.model.resnet import batch_norm, build_resnet_backbone, check_encoder

__all__ = ["CONFIG_KEYS", "GlacierDeepLab", "build_deeplab", "default_stats"]

LOW_CHANNELS = 48
DECODER_CHANNELS = 256
STAT_KEYS = ("lo", "hi", "mean", "std")
TASKS = ("binary", "multiclass")
BINARY_CLASSES = ("background", "glacier")
BINARY_VALUES = (0, 255)
#: What ``GlacierDeepLab.get_config`` returns: exactly its constructor arguments.
CONFIG_KEYS = (
    "num_bands", "band_names", "task", "class_names", "class_values", "encoder", "aspp_rates", "reduction",
    "dropout", "output_stride", "threshold", "stats",
)  # fmt: skip


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


def _checked_classes(task, class_names, class_values) -> tuple[list[str], list[int]]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} (got {task!r})")
    if task == "binary":
        names = list(BINARY_CLASSES if class_names is None else class_names)
        values = list(BINARY_VALUES if class_values is None else class_values)
        if len(names) != 2:
            raise ValueError(f"a binary model has 2 classes (background, glacier), got class_names {names}")
    else:
        if class_names is None or len(class_names) < 2:
            raise ValueError(f"a multiclass model needs at least 2 class_names (got {class_names})")
        names = [str(name) for name in class_names]
        if class_values is None:
            unknown = [name for name in names if name not in PHASE2_VALUES]
            if unknown:
                raise ValueError(
                    f"no default mask value for class(es) {', '.join(unknown)} "
                    f"(known: {', '.join(PHASE2_VALUES)}); give class_values"
                )
            class_values = [PHASE2_VALUES[name] for name in names]
        values = list(class_values)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names repeat a name: {names}")
    if len(values) != len(names) or not all(int(v) == v and 0 <= int(v) <= 255 for v in values):
        raise ValueError(f"class_values must be {len(names)} integers in 0..255 (one per class), got {values}")
    return [str(name) for name in names], [int(v) for v in values]


def _separable(x, filters: int, name: str):
    x = FastDepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}.depthwise")(x)
    x = FastConv2D(filters, 1, use_bias=False, name=f"{name}.pointwise")(x)
    x = batch_norm(f"{name}.bn")(x)
    return layers.ReLU(name=f"{name}.relu")(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlacierDeepLab(keras.Model):
    """The network: raw (B, H, W, num_bands) bands -> float32 logits, (B, H, W, 1) or (B, H, W, K).

    Binary models have one logit (the glacier), compared with ``threshold`` as a probability; a
    "multiclass" model has one logit per entry of ``class_names``. ``stats`` is the stats.json
    dictionary (extra keys ignored); None gives statistics that only clip the input to [0, 1], for
    tests and for models whose weights are loaded afterwards. ``get_config`` reports the statistics
    held in the model's weights, so a model whose weights were replaced still says what it is.
    ``threshold`` is a plain attribute: training sets it after choosing it on validation data.
    Only output stride 16 exists (the PyTorch twin fixes layer4's dilation).
    """

    def __init__(
        self,
        num_bands: int = 5,
        band_names: Sequence[str] | None = None,
        task: str = "binary",
        class_names: Sequence[str] | None = None,
        class_values: Sequence[int] | None = None,
        encoder: str = DEFAULT_ENCODER,
        aspp_rates: Sequence[int] = ASPP_RATES,
        reduction: int = 16,
        dropout: float = 0.1,
        output_stride: int = OUTPUT_STRIDE,
        threshold: float = 0.5,
        stats: Mapping[str, Sequence[float]] | None = None,
        name: str = "attention_deeplabv3plus",
        **kwargs,
    ):
        num_bands = int(num_bands)
        if num_bands < 1:
            raise ValueError(f"num_bands must be positive (got {num_bands})")
        if int(output_stride) != OUTPUT_STRIDE:
            raise ValueError(f"only output_stride={OUTPUT_STRIDE} is supported (got {output_stride})")
        band_names = [f"B{i + 1}" for i in range(num_bands)] if band_names is None else [str(b) for b in band_names]
        if len(band_names) != num_bands:
            raise ValueError(f"band_names has {len(band_names)} names but num_bands is {num_bands}")
        class_names, class_values = _checked_classes(task, class_names, class_values)
        encoder = check_encoder(str(encoder))
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a probability strictly between 0 and 1 (got {threshold})")
        stats = _checked_stats(stats, num_bands)
        logits = 1 if task == "binary" else len(class_names)

        inputs = keras.Input((None, None, num_bands), name="bands", dtype="float32")
        x = BandNormalization(**stats, name="normalize")(inputs)
        low, high = build_resnet_backbone(num_bands, encoder, output_stride=int(output_stride))(x)
        x = aspp(high, rates=tuple(int(r) for r in aspp_rates), dropout=float(dropout), reduction=int(reduction))
        low = FastConv2D(LOW_CHANNELS, 1, use_bias=False, name="decoder.low_proj.conv")(low)
        low = batch_norm("decoder.low_proj.bn")(low)
        low = layers.ReLU(name="decoder.low_proj.relu")(low)
        x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder.upsample")(x)
        x = layers.Concatenate(axis=-1, name="decoder.concat")([x, low])
        x = _separable(x, DECODER_CHANNELS, "decoder.sep1")
        x = _separable(x, DECODER_CHANNELS, "decoder.sep2")
        x = FastConv2D(logits, 1, use_bias=True, name="head")(x)
        # Upsampling the logits in float32 costs little and keeps their sub-pixel detail.
        x = layers.UpSampling2D(4, interpolation="bilinear", dtype="float32", name="upsample")(x)
        outputs = layers.Activation("linear", dtype="float32", name="logits")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        self.num_bands = num_bands
        self.band_names = band_names
        self.task = task
        self.class_names = class_names
        self.class_values = class_values
        self.encoder = encoder
        self.aspp_rates = [int(r) for r in aspp_rates]
        self.reduction = int(reduction)
        self.dropout = float(dropout)
        self.output_stride = int(output_stride)
        self.threshold = float(threshold)

    @property
    def num_classes(self) -> int:
        """Number of classes (2 for a binary model, whose head still has one logit)."""
        return len(self.class_names)

    def get_config(self) -> dict:
        return {
            "num_bands": self.num_bands,
            "band_names": list(self.band_names),
            "task": self.task,
            "class_names": list(self.class_names),
            "class_values": list(self.class_values),
            "encoder": self.encoder,
            "aspp_rates": list(self.aspp_rates),
            "reduction": self.reduction,
            "dropout": self.dropout,
            "output_stride": self.output_stride,
            "threshold": float(self.threshold),
            "stats": self.get_layer("normalize").statistics(),
        }

    @classmethod
    def from_config(cls, config: dict) -> GlacierDeepLab:
        return cls(**config)


def build_deeplab(
    num_bands: int = 5,
    stats: Mapping[str, Sequence[float]] | None = None,
    aspp_rates: Sequence[int] = ASPP_RATES,
    dropout: float = 0.1,
    reduction: int = 16,
    name: str = "attention_deeplabv3plus",
    **config,
) -> GlacierDeepLab:
    """A :class:`GlacierDeepLab`; the keyword arguments of ``GlacierDeepLab`` (band_names, task, ...) pass through."""
    return GlacierDeepLab(
        num_bands=num_bands, stats=stats, aspp_rates=aspp_rates, dropout=dropout, reduction=reduction, name=name,
        **config,
    )
