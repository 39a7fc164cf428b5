"""The one name and layout map between the Keras model's weights and the PyTorch module's state dict.

Both directions (Keras -> torch for export, torch -> Keras for round trips and for loading
torchvision's pretrained ResNet-34) read the same table, ``_RULES``, so a layout fix made for one
direction cannot silently break the other. Names need no table: by contract (README, "Architecture") every weighted
Keras layer is named exactly as its PyTorch module path, and layers of a nested model (the
"backbone") take that model's name as a prefix.
"""

from __future__ import annotations

import keras_glacier  # noqa: F401  (selects the Keras backend before keras is first imported)

# isort: split

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import keras
import numpy as np

#: The Keras class that carries the input statistics. It is recognised by class name (anywhere in the
#: layer's MRO) so that this module does not import the model package, which may not be built yet.
BAND_NORMALIZATION = "BandNormalization"

#: Buffer PyTorch's BatchNorm keeps that Keras has no weight for; exported as 0 and ignored on import.
NUM_BATCHES_TRACKED = "num_batches_tracked"


class ConversionError(ValueError):
    """Raised when the two sides disagree on names or shapes; the message names every offending key."""


@dataclass(frozen=True)
class WeightRule:
    """How one Keras variable of a layer kind becomes one torch tensor, and back."""

    keras_name: str
    torch_suffix: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_keras: Callable[[np.ndarray], np.ndarray]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _conv_to_torch(kernel: np.ndarray) -> np.ndarray:  # (kh, kw, in, out) -> (out, in, kh, kw)
    return np.transpose(kernel, (3, 2, 0, 1))


def _conv_to_keras(weight: np.ndarray) -> np.ndarray:  # (out, in, kh, kw) -> (kh, kw, in, out)
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise_to_torch(kernel: np.ndarray) -> np.ndarray:  # (kh, kw, C, m) -> (C*m, 1, kh, kw)
    kh, kw, channels, multiplier = kernel.shape
    return np.transpose(kernel.reshape(kh, kw, channels * multiplier), (2, 0, 1))[:, None]


def _depthwise_to_keras(weight: np.ndarray) -> np.ndarray:  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    return np.transpose(weight[:, 0], (1, 2, 0))[..., None]


def _dense_to_torch(kernel: np.ndarray) -> np.ndarray:  # (in, out) -> (out, in)
    return np.transpose(kernel)


_BIAS = WeightRule("bias", "bias", _same, _same)

#: (kind, Keras base class or class name, rules). Order matters: the first matching kind wins, and
#: subclasses (e.g. the model's fast Conv2D/DepthwiseConv2D) map exactly like their bases.
_RULES: tuple[tuple[str, type | str, tuple[WeightRule, ...]], ...] = (
    (
        "DepthwiseConv2D",
        keras.layers.DepthwiseConv2D,
        (WeightRule("kernel", "weight", _depthwise_to_torch, _depthwise_to_keras), _BIAS),
    ),
    ("Conv2D", keras.layers.Conv2D, (WeightRule("kernel", "weight", _conv_to_torch, _conv_to_keras), _BIAS)),
    ("Dense", keras.layers.Dense, (WeightRule("kernel", "weight", _dense_to_torch, _dense_to_torch), _BIAS)),
    (
        "BatchNormalization",
        keras.layers.BatchNormalization,
        (
            WeightRule("gamma", "weight", _same, _same),
            WeightRule("beta", "bias", _same, _same),
            WeightRule("moving_mean", "running_mean", _same, _same),
            WeightRule("moving_variance", "running_var", _same, _same),
        ),
    ),
    (
        BAND_NORMALIZATION,
        BAND_NORMALIZATION,
        tuple(WeightRule(name, name, _same, _same) for name in ("lo", "hi", "mean", "std")),
    ),
)


def variable_value(variable) -> np.ndarray:
    """A Keras variable's value as numpy.

    Goes through ``variable.value`` because numpy 2 warns (DeprecationWarning) when it converts a
    Keras Variable itself, whose ``__array__`` predates the ``copy`` keyword.
    """
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def layer_kind(layer: keras.layers.Layer) -> tuple[str, tuple[WeightRule, ...]]:
    """The table entry for ``layer``; an unknown layer that has weights is an error, never skipped."""
    mro_names = {cls.__name__ for cls in type(layer).__mro__}
    for kind, match, rules in _RULES:
        if (isinstance(match, str) and match in mro_names) or (
            isinstance(match, type) and isinstance(layer, match)
        ):
            return kind, rules
    raise ConversionError(
        f"layer '{layer.name}' of type {type(layer).__name__} has weights but no conversion rule "
        f"(known: {', '.join(kind for kind, _, _ in _RULES)})"
    )


def iter_weighted_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yields (torch module path, layer) for every layer that owns weights, recursing into nested models.

    A nested model contributes its own name plus "." to its layers' paths (the "backbone" rule).
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_weighted_layers(layer, f"{prefix}{layer.name}.")
        elif layer.weights:
            yield f"{prefix}{layer.name}", layer


def _variables_by_rule(path: str, layer: keras.layers.Layer, kind: str, rules: tuple[WeightRule, ...]):
    """Pairs each of the layer's variables with its rule; a variable the table does not know is an error."""
    by_name = {rule.keras_name: rule for rule in rules}
    pairs = []
    for variable in layer.weights:
        rule = by_name.get(variable.name)
        if rule is None:
            raise ConversionError(
                f"layer '{path}' ({kind}) has a weight '{variable.name}' that the conversion table does not "
                f"know (known: {', '.join(by_name)})"
            )
        pairs.append((variable, rule))
    return pairs


#: The ASPP's dilation rates shape no weight, so the PyTorch module keeps them as an int64 buffer.
ASPP_RATES_KEY = "aspp.rates"


def aspp_rates_of(model: keras.Model) -> tuple[int, ...] | None:
    """The dilation rates of the ASPP's three atrous branches, or None for a model without an ASPP."""
    try:
        return tuple(int(model.get_layer(f"aspp.b{i}.conv").dilation_rate[0]) for i in (1, 2, 3))
    except ValueError:
        return None


def keras_to_torch_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The PyTorch state dict (as numpy arrays, float32 / int64) holding ``model``'s weights."""
    state: dict[str, np.ndarray] = {}
    rates = aspp_rates_of(model)
    if rates is not None:
        state[ASPP_RATES_KEY] = np.asarray(rates, dtype=np.int64)
    for path, layer in iter_weighted_layers(model):
        kind, rules = layer_kind(layer)
        for variable, rule in _variables_by_rule(path, layer, kind, rules):
            key = f"{path}.{rule.torch_suffix}"
            if key in state:
                raise ConversionError(f"two Keras weights map to the same torch key '{key}'")
            value = variable_value(variable).astype(np.float32)
            state[key] = np.ascontiguousarray(rule.to_torch(value))
        if kind == "BatchNormalization":
            state[f"{path}.{NUM_BATCHES_TRACKED}"] = np.zeros((), dtype=np.int64)
    return state


def _shape_of(value) -> tuple[int, ...]:
    return tuple(int(size) for size in value.shape)


def check_against(reference: Mapping[str, object], converted: Mapping[str, object]) -> None:
    """Raises ConversionError naming every missing, unexpected and wrongly shaped key.

    ``reference`` is what the PyTorch module expects (its ``state_dict()``); values may be tensors or
    arrays, only names and shapes are compared.
    """
    missing = sorted(set(reference) - set(converted))
    unexpected = sorted(set(converted) - set(reference))
    wrong = [
        f"{key}: expected {_shape_of(reference[key])}, got {_shape_of(converted[key])}"
        for key in sorted(set(reference) & set(converted))
        if _shape_of(reference[key]) != _shape_of(converted[key])
    ]
    _raise_if_mismatched(
        "Keras and PyTorch weights do not match",
        ("missing in the converted weights", missing),
        ("not in the PyTorch module", unexpected),
        ("wrong shape", wrong),
    )


def _raise_if_mismatched(headline: str, *groups: tuple[str, list[str]]) -> None:
    """One ConversionError listing every non-empty group of problem keys (both directions use it)."""
    parts = [f"{label} ({len(keys)}): {('; ' if label == 'wrong shape' else ', ').join(keys)}"
             for label, keys in groups if keys]
    if parts:
        raise ConversionError(f"{headline}: " + " | ".join(parts))


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not needed here
        value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)


def _state_key(path: str, prefix_map: Mapping[str, str] | None) -> str | None:
    """The state-dict name of Keras path ``path``, or None when no prefix of ``prefix_map`` covers it."""
    if prefix_map is None:
        return path
    matches = [prefix for prefix in prefix_map if path.startswith(prefix)]
    if not matches:
        return None
    longest = max(matches, key=len)
    return prefix_map[longest] + path[len(longest) :]


def torch_to_keras(
    state_dict: Mapping[str, object],
    model: keras.Model,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = True,
) -> set[str]:
    """Loads a PyTorch state dict into ``model`` in place; returns the state-dict keys it used.

    ``prefix_map`` maps a Keras path prefix to the state dict's prefix, and also selects what is
    loaded: only layers under one of its prefixes are touched (the longest prefix wins). For example
    ``{"backbone.": ""}`` loads a bare torchvision ResNet into the backbone alone. ``None`` loads every
    layer under its own name. Every selected Keras weight must be found with the right shape; with
    ``strict`` every key of ``state_dict`` (bar BatchNorm's ``num_batches_tracked``) must be used.
    Nothing is assigned unless everything matches, so a failed load leaves the model unchanged.
    """
    pending = []
    missing, wrong = [], []
    used: set[str] = set()
    for path, layer in iter_weighted_layers(model):
        base = _state_key(path, prefix_map)
        if base is None:
            continue
        kind, rules = layer_kind(layer)
        for variable, rule in _variables_by_rule(path, layer, kind, rules):
            key = f"{base}.{rule.torch_suffix}" if base else rule.torch_suffix
            if key not in state_dict:
                missing.append(key)
                continue
            value = rule.to_keras(_to_numpy(state_dict[key]))
            if _shape_of(value) != _shape_of(variable):
                needed = _shape_of(rule.to_torch(np.empty(_shape_of(variable), dtype=np.float32)))
                wrong.append(f"{key}: expected {needed}, got {_shape_of(_to_numpy(state_dict[key]))}")
                continue
            used.add(key)
            pending.append((variable, value))
        if kind == "BatchNormalization":
            counter = f"{base}.{NUM_BATCHES_TRACKED}" if base else NUM_BATCHES_TRACKED
            if counter in state_dict:
                used.add(counter)
    if ASPP_RATES_KEY in state_dict and _state_key(ASPP_RATES_KEY, prefix_map) is not None:
        rates = tuple(int(r) for r in _to_numpy(state_dict[ASPP_RATES_KEY]).tolist())
        if rates != aspp_rates_of(model):
            wrong.append(f"{ASPP_RATES_KEY}: the Keras model has rates {aspp_rates_of(model)}, the state dict {rates}")
        used.add(ASPP_RATES_KEY)
    unexpected = sorted(set(state_dict) - used) if strict else []
    _raise_if_mismatched(
        "cannot load the state dict into the Keras model",
        ("missing in the state dict", missing),
        ("not used by the Keras model", unexpected),
        ("wrong shape", wrong),
    )
    for variable, value in pending:
        variable.assign(value.astype(variable.dtype))
    return used
