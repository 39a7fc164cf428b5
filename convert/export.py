"""Keras model -> verified ``model.pth`` for solution.py.

A file is only ever published after three checks pass: every Keras weight has a place in
``solution.AttentionDeepLabV3Plus`` with the same shape, the file fits the competition's size limit,
and ``solution.load_model`` of the very bytes written reproduces the Keras logits. Until then it
lives under a temporary name in the destination folder, so a failed conversion never leaves (or
overwrites with) a bad file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from convert.config import BINARY_CLASSES, model_config
from convert.name_map import (
    ConversionError,
    check_against,
    keras_to_torch_state_dict,
    torch_to_keras,
    variable_value,
)
from keras_glacier.constants import DEFAULT_ENCODER
from keras_glacier.errors import InputError
from keras_glacier.fileio import atomic_write
from keras_glacier.model.ensemble import members_disagreement

#: The competition's upper bound on the weights file.
MAX_BYTES = 200_000_000
#: Max |logit difference| accepted between Keras and the written float32 file: 1e-4, or 1e-4 of the largest
#: |logit| when that is more. Float32 rounding grows with the values it rounds and with every layer that
#: divides by a small standard deviation: tiny test networks after two epochs, their BatchNorm statistics
#: recomputed on a few tiles (variances down to 6e-4, so a layer multiplies by up to 40), reach logits of
#: 41 and 2240 on the random probe and differed by 1.3e-4 and 0.067 (3e-6 and 3e-5 of the largest logit);
#: a wrong layer (padding, epsilon, a swapped weight) moves logits by a large part of their size.
FP32_TOLERANCE = 1e-4
FP32_RELATIVE_TOLERANCE = 1e-4
#: With --half, weights are rounded to float16 (11-bit mantissa, relative error ~5e-4 per weight), which
#: moves logits by a small fraction of their magnitude: accepted is max(5e-2, 1e-2 * max|logit|).
HALF_TOLERANCE = 5e-2
HALF_RELATIVE_TOLERANCE = 1e-2
#: ``model.pth["format"]`` values, as solution.py reads them.
FORMAT = "keras-glacier/1"
ENSEMBLE_FORMAT = "keras-glacier-ensemble/1"
#: Verification batch: two tiles of 64x64 (a multiple of the output stride), fixed seed.
PROBE_SHAPE = (2, 64, 64)
PROBE_SEED = 1234


class ConversionInputError(InputError):
    """A user mistake in what convert is given: reported as one line, no traceback (keras_glacier.cli)."""


@dataclass(frozen=True)
class ConversionReport:
    """What was written and how closely it reproduces the Keras model."""

    path: Path
    size_bytes: int
    half: bool
    num_tensors: int
    num_parameters: int
    in_channels: int
    aspp_rates: tuple[int, ...]
    reduction: int
    task: str = "binary"
    class_names: tuple[str, ...] = ("background", "glacier")
    members: int = 1
    max_abs_diff: float | None = None  # None when verification was skipped
    mask_agreement: float | None = None  # fraction of probe pixels with the same (logit > 0) decision
    tolerance: float | None = None
    notes: tuple[str, ...] = ()  # things the user must know to use the file (printed by the CLI)

    def summary(self) -> str:
        dtype = "float16" if self.half else "float32"
        what = f"an ensemble of {self.members} networks, " if self.members > 1 else ""
        lines = [
            f"wrote {self.path} ({what}{self.size_bytes / 1e6:.1f} MB, {self.size_bytes} bytes, {dtype}, "
            f"{self.num_tensors} tensors, {self.num_parameters / 1e6:.2f}M parameters; {self.task}: "
            f"{', '.join(self.class_names)})"
        ]
        if self.max_abs_diff is None:
            lines.append("verification skipped (--no-verify)")
        else:
            batch, height, width = PROBE_SHAPE
            lines.append(
                f"verified against Keras on {batch}x{height}x{width}: "
                f"max |logit diff| = {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:.3g}), mask agreement {100 * self.mask_agreement:.3f}%"
                + (" (worst member)" if self.members > 1 else "")
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def resolve_keras_path(source: str | os.PathLike) -> Path:
    """``RUN_DIR`` -> ``RUN_DIR/model.keras``; checks the file exists and is a .keras archive."""
    from keras_glacier.inference import resolve_model_path

    return resolve_model_path(source)


def load_keras_model(source: str | os.PathLike) -> keras.Model:
    """The Keras model of a run folder or ``.keras`` file, through the package's one loader."""
    from keras_glacier.inference import load_run

    return load_run(source).model


def build_torch_module(config: dict):
    """The PyTorch twin with the given configuration, in eval mode (imports solution.py lazily)."""
    import solution

    try:
        return solution.AttentionDeepLabV3Plus.from_config(config).eval()
    except solution.InputError as exc:
        raise ConversionError(str(exc)) from exc


def torch_state_dict(model: keras.Model, module, half: bool = False) -> dict:
    """Converted weights as torch tensors in the module's dtypes, checked name by name and shape by shape."""
    import torch

    converted = keras_to_torch_state_dict(model)
    reference = module.state_dict()
    check_against(reference, converted)
    tensors = {
        key: torch.from_numpy(np.array(value, order="C")).to(reference[key].dtype).contiguous()  # 0-d stays 0-d
        for key, value in converted.items()
    }
    return _halved(tensors) if half else tensors


def probe_batch(
    model: keras.Model, shape: tuple[int, int, int] = PROBE_SHAPE, seed: int = PROBE_SEED
) -> np.ndarray:
    """Raw-valued inputs spanning (and slightly beyond) the model's lo..hi range, with no-data pixels.

    Values outside lo..hi exercise the clipping, and a NaN pixel the no-data path, on both sides.
    """
    lo, hi = _band_range(model)
    rng = np.random.default_rng(seed)
    unit = rng.uniform(-0.25, 1.25, size=(*shape, lo.size)).astype(np.float32)
    batch = (lo + unit * (hi - lo)).astype(np.float32)
    batch[0, 0, 0, :] = np.nan
    batch[-1, shape[1] // 2, shape[2] // 3, 0] = np.nan
    return batch


def _band_range(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer("normalize")
    weights = {variable.name: variable_value(variable) for variable in layer.weights}
    return weights["lo"].astype(np.float32), weights["hi"].astype(np.float32)


def keras_logits(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """(B, H, W, K) float32 logits (K = 1 binary), inference mode."""
    return np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), dtype=np.float32)


def torch_logits(module, batch: np.ndarray) -> np.ndarray:
    """(B, H, W, K) float32 logits of the PyTorch twin for a channels-last batch."""
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
    return out.float().numpy().transpose(0, 2, 3, 1)


def compare_logits(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |diff|, agreement of the masks: logit > 0 for one output, the argmax for K)."""
    if reference.shape != other.shape:
        raise ConversionError(f"logit shapes differ: Keras {reference.shape}, PyTorch {other.shape}")
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    if reference.shape[-1] == 1:
        agreement = float(np.mean((reference > 0) == (other > 0)))
    else:
        agreement = float(np.mean(np.argmax(reference, -1) == np.argmax(other, -1)))
    return max_diff, agreement


def tolerance_for(reference_logits: np.ndarray, half: bool) -> float:
    if not half:
        return max(FP32_TOLERANCE, FP32_RELATIVE_TOLERANCE * float(np.max(np.abs(reference_logits))))
    return max(HALF_TOLERANCE, HALF_RELATIVE_TOLERANCE * float(np.max(np.abs(reference_logits))))


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def float32_reference(model: keras.Model, config: dict) -> tuple[keras.Model, tuple[str, ...]]:
    """``model`` itself when it computes in float32, else a float32 copy carrying the same weights.

    solution.py computes in float32, so a model trained under a mixed-precision policy is verified
    through its float32 twin; the copy is built from the keras-glacier definition and filled from the
    converted float32 weights through the inverse map, which reproduces every weight exactly (not from
    the float16 file tensors, which would hide the --half rounding from the check).
    """
    policies = {layer.dtype_policy.name for layer in _all_layers(model)} - {"float32"}
    if not policies:
        return model, ()
    from keras_glacier.model import build_deeplab

    normalize = model.get_layer("normalize")
    stats = {variable.name: variable_value(variable).tolist() for variable in normalize.weights}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        kwargs = {}
        if config.get("task", "binary") != "binary":  # the multi-class head (model branch API)
            kwargs = {"task": config["task"], "class_names": config["class_names"]}
        reference = build_deeplab(
            num_bands=config["num_bands"],
            stats=stats,
            aspp_rates=config["aspp_rates"],
            reduction=config["reduction"],
            encoder=config.get("encoder", DEFAULT_ENCODER),
            **kwargs,
        )
    finally:
        keras.config.set_dtype_policy(previous)
    torch_to_keras(keras_to_torch_state_dict(model), reference)
    note = (
        f"the Keras model computes in {', '.join(sorted(policies))}; it was verified through its float32 "
        "equivalent (same weights), which is what solution.py computes"
    )
    return reference, (note,)


def _save_atomically_verified(content: dict, out_path: Path, verify_file) -> int:
    """Writes to a temporary sibling, lets ``verify_file`` inspect it, then renames it into place."""
    import torch

    def write_and_check(tmp: str) -> None:
        torch.save(content, tmp)
        size = os.path.getsize(tmp)
        if size > MAX_BYTES:
            raise ConversionError(
                f"{out_path}: not written: it would be {size / 1e6:.1f} MB, "
                f"over the {MAX_BYTES / 1e6:.0f} MB limit"
                + (" even in float16" if _is_half(content) else "")
            )
        verify_file(Path(tmp))

    atomic_write(out_path, write_and_check)
    return out_path.stat().st_size


def _is_half(content: dict) -> bool:
    import torch

    states = [member["state_dict"] for member in content.get("members", [content])]
    return any(value.dtype == torch.float16 for state in states for value in state.values())


def _run_config(source) -> dict:
    """The config.json of the run a .keras file belongs to ({} without one, or for an in-memory model)."""
    if isinstance(source, keras.Model):
        return {}
    config_path = resolve_keras_path(source).parent / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConversionInputError(f"{config_path}: cannot read run config ({type(exc).__name__}: {exc})") from exc
    return config if isinstance(config, dict) else {}


def _networks(models: list, names: list[str], sources: list) -> list[tuple]:
    """(network, name, run config, threshold or None) per network to pack: an ensemble model
    (``train --members``) gives its members, each with the ensemble's decision threshold."""
    from keras_glacier.model import GlacierEnsemble

    networks = []
    for model, name, source in zip(models, names, sources):
        if isinstance(model, GlacierEnsemble):
            networks += [(member, f"{name} member {i + 1}", {}, model.threshold)
                         for i, member in enumerate(model.members)]
        else:
            networks.append((model, name, _run_config(source), None))
    return networks


def _source_name(source) -> str:
    return f"model '{source.name}'" if isinstance(source, keras.Model) else str(source)


def _check_members_agree(names: list[str], configs: list[dict]) -> None:
    problem = members_disagreement(names, configs)
    if problem:
        raise ConversionInputError(problem)


def _float32_bytes(states: list[dict]) -> int:
    return sum(4 * value.numel() if value.is_floating_point() else value.element_size() * value.numel()
               for state in states for value in state.values())


def convert_models(
    sources: list,
    out_path: str | os.PathLike,
    half: bool | None = None,
    verify: bool = True,
) -> ConversionReport:
    """Converts one Keras model or several (an ensemble) into one verified ``model.pth``.

    One source writes ``{"format": "keras-glacier/1", "config", "state_dict"}``; several write
    ``{"format": "keras-glacier-ensemble/1", "members": [...]}``, whose members must agree on bands
    and classes. ``half=None`` (the default) chooses float16 only when float32 would exceed the 200 MB
    limit, as two ResNet-34 networks do (whether two sources or one ``train --members 2`` ensemble);
    a file over the limit even then is refused with its size. Every member is checked against its
    Keras model (parity per member) through the file solution.py will read.
    """
    if not sources:
        raise ConversionInputError("no model to convert")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConversionInputError(f"{out_path}: is a folder; give the output file name (e.g. model.pth)")
    if out_path.suffix.lower() == ".keras":
        raise ConversionInputError(f"{out_path}: the output is a PyTorch file, not a Keras model: give a .pth name "
                                   "(a .keras file there would be replaced)")
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise ConversionInputError(f"{out_path.parent}: is a file, not a folder for the output")
    if not out_path.parent.is_dir():
        raise ConversionInputError(f"{out_path.parent}: output folder does not exist")
    from keras_glacier.inference import check_finite_weights

    for source in sources:  # files are checked as load_run reads them
        if isinstance(source, keras.Model):
            check_finite_weights(source, _source_name(source))
    keras_models = [source if isinstance(source, keras.Model) else load_keras_model(source) for source in sources]
    networks = _networks(keras_models, [_source_name(source) for source in sources], sources)
    models = [network[0] for network in networks]
    names = [network[1] for network in networks]

    configs = [model_config(model, run_config) for model, _, run_config, _ in networks]
    for config, (_, _, _, threshold) in zip(configs, networks):
        if threshold is not None:
            config["threshold"] = threshold  # solution.py's ensemble thresholds its members' mean threshold
    if len(models) > 1:
        _check_members_agree(names, configs)
    modules = [build_torch_module(config) for config in configs]
    full = [torch_state_dict(model, module) for model, module in zip(models, modules)]
    halved_to_fit = half is None and _float32_bytes(full) > MAX_BYTES * 0.98  # 2% for the container and config
    half = bool(half) or halved_to_fit
    states = [_halved(state) if half else state for state in full]
    if len(models) == 1:
        content: dict = {"format": FORMAT, "config": configs[0], "state_dict": states[0]}
    else:
        members = [{"config": config, "state_dict": state} for config, state in zip(configs, states)]
        content = {"format": ENSEMBLE_FORMAT, "members": members}
    measured: dict = {}
    notes: list[str] = []

    def verify_file(tmp: Path) -> None:
        if not verify:
            return
        import solution

        try:
            loaded = solution.load_model(str(tmp), "cpu")
        except solution.InputError as exc:
            reason = str(exc).replace(f"{tmp}: ", "").replace(f"{tmp} ", "")
            raise ConversionError(f"{out_path}: not written: solution.load_model rejects it: {reason}") from exc
        loaded_members = list(loaded.members) if len(models) > 1 else [loaded]
        worst: dict = {}
        for name, model, config, member in zip(names, models, configs, loaded_members):
            reference_model, precision_notes = float32_reference(model, config)
            notes.extend(precision_notes)
            batch = probe_batch(reference_model)
            reference = keras_logits(reference_model, batch)
            max_diff, agreement = compare_logits(reference, torch_logits(member, batch))
            tolerance = tolerance_for(reference, half)
            where = f" (member {name})" if len(models) > 1 else ""
            if not max_diff <= tolerance:
                raise ConversionError(
                    f"{out_path}: not written: the PyTorch model's logits differ from Keras{where} "
                    f"by up to {max_diff:.3g} "
                    f"(tolerance {tolerance:.3g}; mask agreement {100 * agreement:.3f}%)"
                )
            if not worst or max_diff / tolerance > worst["max_abs_diff"] / worst["tolerance"]:
                worst = {"max_abs_diff": max_diff, "mask_agreement": agreement, "tolerance": tolerance}
        measured.update(worst)

    size = _save_atomically_verified(content, out_path, verify_file)
    if halved_to_fit:
        notes.append("stored as float16 to stay under the 200 MB limit (solution.py computes in float32)")
    return ConversionReport(
        path=out_path,
        size_bytes=size,
        half=bool(half),
        num_tensors=sum(len(state) for state in states),
        num_parameters=int(sum(p.numel() for module in modules for p in module.parameters())),
        in_channels=configs[0]["num_bands"],
        aspp_rates=tuple(configs[0]["aspp_rates"]),
        reduction=configs[0]["reduction"],
        task=configs[0].get("task", "binary"),
        class_names=tuple(configs[0].get("class_names", BINARY_CLASSES)),
        members=len(models),
        notes=tuple(notes),
        **measured,
    )


def _halved(state: dict) -> dict:
    import torch

    halved = {}
    for key, tensor in state.items():
        if tensor.is_floating_point():
            half_tensor = tensor.to(torch.float16)
            if bool(torch.isinf(half_tensor).any()) and not bool(torch.isinf(tensor).any()):
                largest = float(tensor.abs().max())
                raise ConversionError(f"weight '{key}' overflows float16 (max |value| {largest:.3g})")
            tensor = half_tensor
        halved[key] = tensor.contiguous()
    return halved


def convert_model(
    keras_model_or_path: keras.Model | str | os.PathLike,
    out_path: str | os.PathLike,
    half: bool | None = None,
    verify: bool = True,
) -> ConversionReport:
    """Converts a Keras model (object, .keras file or run folder) into a verified ``model.pth``.

    ``half``: True stores float16, False float32, None (the default) float16 only when float32 would
    exceed the 200 MB limit (:func:`convert_models`).

    Raises ConversionInputError for user mistakes and ConversionError when the model and the PyTorch
    module disagree or the written file does not reproduce the Keras logits; no file is left then,
    and an existing ``out_path`` is untouched.
    """
    return convert_models([keras_model_or_path], out_path, half=half, verify=verify)
