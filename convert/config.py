"""The configuration model.pth carries: read off a Keras model, and checked across ensemble members.

The keys are the Keras ``GlacierDeepLab.get_config()`` keys without the input statistics (those
travel as the normalisation buffers of the state dict), so solution.py builds exactly the network
the Keras model is.
"""

from __future__ import annotations

import keras
import numpy as np

from convert.name_map import ConversionError, aspp_rates_of

#: The configuration keys model.pth carries (CONTRACT: the Keras model's get_config without its
#: statistics, which travel as the normalisation buffers of the state dict).
CONFIG_KEYS = (
    "num_bands", "band_names", "task", "class_names", "class_values",
    "encoder", "aspp_rates", "reduction", "dropout", "output_stride", "threshold",
)
BINARY_CLASSES = ["background", "glacier"]


def _plain(value):
    """JSON-plain copy (tuples -> lists, numpy scalars -> Python), as torch.load(weights_only) reads."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _run_threshold(run_config: dict | None) -> float:
    """A run's chosen threshold: a number in its config; ``"auto"`` (chosen at the end, stored in the
    model and run.json) or nothing means 0.5 here."""
    value = (run_config or {}).get("threshold", 0.5)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.5


def model_config(model: keras.Model, run_config: dict | None = None) -> dict:
    """The configuration written into model.pth.

    A ``GlacierDeepLab`` says what it is (``get_config()`` has ``band_names``; one saved before the
    encoder choice names none, and solution.py reads that as ResNet-34, which it is); an older functional
    model is a binary ResNet-34 model whose band count, ASPP rates and CBAM reduction are read off its layers,
    with the threshold of the run's config.json when there is one (else 0.5).
    """
    try:
        own = model.get_config()
    except (NotImplementedError, TypeError, AttributeError):
        own = None
    if isinstance(own, dict) and "band_names" in own:
        config = {key: _plain(own[key]) for key in CONFIG_KEYS if key in own}
        config["num_bands"] = int(config.get("num_bands", model.inputs[0].shape[-1]))
        config.setdefault("threshold", _run_threshold(run_config))
        return config
    try:
        in_channels = int(model.inputs[0].shape[-1])
        rates = aspp_rates_of(model)
        if rates is None:
            raise ValueError("no layer aspp.b1.conv")
        channels = int(model.get_layer("aspp.b0.conv").filters)
        hidden = int(model.get_layer("aspp.b0.cbam.ca.fc1").units)
        outputs = int(model.get_layer("head").filters)
    except (ValueError, AttributeError, IndexError) as exc:
        raise ConversionError(f"model '{model.name}' is not a keras-glacier DeepLab model: {exc}") from exc
    if outputs != 1:
        raise ConversionError(
            f"model '{model.name}' has a {outputs}-class head but no configuration naming its classes "
            "(save it as a keras_glacier GlacierDeepLab)"
        )
    config = {
        "num_bands": in_channels, "task": "binary", "class_names": list(BINARY_CLASSES), "class_values": [0, 255],
        "aspp_rates": list(rates), "reduction": channels // hidden,
        "threshold": _run_threshold(run_config),
    }
    names = (run_config or {}).get("band_names")
    if isinstance(names, list) and len(names) == in_channels:
        config["band_names"] = [str(name) for name in names]
    return config
