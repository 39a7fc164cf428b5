"""Keras model -> verified ``model.pth`` for solution.py.

A file is only ever published after three checks pass: every Keras weight has a place in
``solution.AttentionDeepLabV3Plus`` with the same shape, the file fits the competition's size limit,
and ``solution.load_model`` of the very bytes written reproduces the Keras logits. Until then it
lives under a temporary name in the destination folder, so a failed conversion never leaves (or
overwrites with) a bad file.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from convert.name_map import (
    ConversionError,
    aspp_rates_of,
    check_against,
    keras_to_torch_state_dict,
    torch_to_keras,
    variable_value,
)

#: The competition's upper bound on the weights file.
MAX_BYTES = 200_000_000
#: Max |logit difference| accepted between Keras and the written float32 file.
FP32_TOLERANCE = 1e-4
#: With --half, weights are rounded to float16 (11-bit mantissa, relative error ~5e-4 per weight), which
#: moves logits by a small fraction of their magnitude: accepted is max(5e-2, 1e-2 * max|logit|).
HALF_TOLERANCE = 5e-2
HALF_RELATIVE_TOLERANCE = 1e-2
#: Verification batch: two tiles of 64x64 (a multiple of the output stride), fixed seed.
PROBE_SHAPE = (2, 64, 64)
PROBE_SEED = 1234


class ConversionInputError(ValueError):
    """A user mistake (missing file, not a Keras model): reported as one line, no traceback."""


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
    max_abs_diff: float | None = None  # None when verification was skipped
    mask_agreement: float | None = None  # fraction of probe pixels with the same (logit > 0) decision
    tolerance: float | None = None
    notes: tuple[str, ...] = ()  # things the user must know to use the file (printed by the CLI)

    def summary(self) -> str:
        dtype = "float16" if self.half else "float32"
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, {self.size_bytes} bytes, {dtype}, "
            f"{self.num_tensors} tensors, {self.num_parameters / 1e6:.2f}M parameters)"
        ]
        if self.max_abs_diff is None:
            lines.append("verification skipped (--no-verify)")
        else:
            batch, height, width = PROBE_SHAPE
            lines.append(
                f"verified against Keras on {batch}x{height}x{width}: "
                f"max |logit diff| = {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:.3g}), mask agreement {100 * self.mask_agreement:.3f}%"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def resolve_keras_path(source: str | os.PathLike) -> Path:
    """``RUN_DIR`` -> ``RUN_DIR/model.keras``; checks the file exists and is a .keras archive."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise ConversionInputError(f"{path}: no such file")
    if not path.is_file() or path.suffix != ".keras":
        raise ConversionInputError(f"{path}: not a .keras model file (give a run folder or a .keras file)")
    return path


def load_keras_model(source: str | os.PathLike) -> keras.Model:
    path = resolve_keras_path(source)
    import keras_glacier.model  # noqa: F401  (registers the custom layers for deserialisation)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # zip, JSON and deserialisation errors all mean "not a usable model"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConversionInputError(f"{path}: cannot load as a Keras model ({reason})") from exc


def model_config(model: keras.Model) -> dict:
    """The constructor arguments of the PyTorch twin, read off the Keras model's layers."""
    try:
        in_channels = int(model.inputs[0].shape[-1])
        rates = aspp_rates_of(model)
        if rates is None:
            raise ValueError("no layer aspp.b1.conv")
        channels = int(model.get_layer("aspp.b0.conv").filters)
        hidden = int(model.get_layer("aspp.b0.cbam.ca.fc1").units)
    except (ValueError, AttributeError, IndexError) as exc:
        raise ConversionError(f"model '{model.name}' is not a keras-glacier DeepLab model: {exc}") from exc
    return {"in_channels": in_channels, "aspp_rates": rates, "reduction": channels // hidden}


def build_torch_module(config: dict):
    """The PyTorch twin with the given configuration, in eval mode (imports solution.py lazily)."""
    import solution

    module = solution.AttentionDeepLabV3Plus(
        in_channels=config["in_channels"],
        aspp_rates=tuple(config["aspp_rates"]),
        reduction=config["reduction"],
    )
    return module.eval()


def torch_state_dict(model: keras.Model, module, half: bool = False) -> dict:
    """Converted weights as torch tensors in the module's dtypes, checked name by name and shape by shape."""
    import torch

    converted = keras_to_torch_state_dict(model)
    reference = module.state_dict()
    check_against(reference, converted)
    tensors = {}
    for key, value in converted.items():
        tensor = torch.from_numpy(np.array(value, order="C")).to(reference[key].dtype)  # keeps 0-d counters 0-d
        if half and tensor.is_floating_point():
            half_tensor = tensor.to(torch.float16)
            if bool(torch.isinf(half_tensor).any()) and not bool(torch.isinf(tensor).any()):
                largest = float(tensor.abs().max())
                raise ConversionError(f"weight '{key}' overflows float16 (max |value| {largest:.3g})")
            tensor = half_tensor
        tensors[key] = tensor.contiguous()
    return tensors


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
    """(B, H, W, 1) float32 logits, inference mode."""
    return np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), dtype=np.float32)


def torch_logits(module, batch: np.ndarray) -> np.ndarray:
    """(B, H, W, 1) float32 logits of the PyTorch twin for a channels-last batch."""
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
    return out.float().numpy().transpose(0, 2, 3, 1)


def compare_logits(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |diff|, agreement of the logit > 0 masks)."""
    if reference.shape != other.shape:
        raise ConversionError(f"logit shapes differ: Keras {reference.shape}, PyTorch {other.shape}")
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    agreement = float(np.mean((reference > 0) == (other > 0)))
    return max_diff, agreement


def tolerance_for(reference_logits: np.ndarray, half: bool) -> float:
    if not half:
        return FP32_TOLERANCE
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
        reference = build_deeplab(
            num_bands=config["in_channels"],
            stats=stats,
            aspp_rates=config["aspp_rates"],
            reduction=config["reduction"],
        )
    finally:
        keras.config.set_dtype_policy(previous)
    torch_to_keras(keras_to_torch_state_dict(model), reference)
    note = (
        f"the Keras model computes in {', '.join(sorted(policies))}; it was verified through its float32 "
        "equivalent (same weights), which is what solution.py computes"
    )
    return reference, (note,)


def _save_atomically_verified(tensors: dict, out_path: Path, verify_file) -> int:
    """Writes to a temporary sibling, lets ``verify_file`` inspect it, then renames it into place."""
    import torch

    # A fresh sibling name (not mkstemp, whose 0600 mode would carry over to the published file).
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        torch.save(tensors, tmp)
        size = tmp.stat().st_size
        if size > MAX_BYTES:
            raise ConversionError(
                f"{out_path}: not written: it would be {size / 1e6:.1f} MB, "
                f"over the {MAX_BYTES / 1e6:.0f} MB limit"
            )
        verify_file(tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return size


def convert_model(
    keras_model_or_path: keras.Model | str | os.PathLike,
    out_path: str | os.PathLike,
    half: bool = False,
    verify: bool = True,
) -> ConversionReport:
    """Converts a Keras model (object, .keras file or run folder) into a verified PyTorch state dict file.

    Raises ConversionInputError for user mistakes and ConversionError when the model and the PyTorch
    module disagree or the written file does not reproduce the Keras logits; no file is left then,
    and an existing ``out_path`` is untouched.
    """
    if isinstance(keras_model_or_path, keras.Model):
        model = keras_model_or_path
    else:
        model = load_keras_model(keras_model_or_path)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConversionInputError(f"{out_path}: is a folder; give the output file name (e.g. model.pth)")
    if not out_path.parent.is_dir():
        raise ConversionInputError(f"{out_path.parent}: output folder does not exist")

    config = model_config(model)
    module = build_torch_module(config)
    tensors = torch_state_dict(model, module, half=half)
    measured: dict = {}
    notes: list[str] = []

    def verify_file(tmp: Path) -> None:
        if not verify:
            return
        import solution

        try:
            loaded = solution.load_model(str(tmp), "cpu")
        except solution.InputError as exc:
            reason = str(exc).replace(f"{tmp}: ", "")
            raise ConversionError(f"{out_path}: not written: solution.load_model rejects it: {reason}") from exc
        reference_model, precision_notes = float32_reference(model, config)
        notes.extend(precision_notes)
        batch = probe_batch(reference_model)
        reference = keras_logits(reference_model, batch)
        max_diff, agreement = compare_logits(reference, torch_logits(loaded, batch))
        tolerance = tolerance_for(reference, half)
        measured.update(max_abs_diff=max_diff, mask_agreement=agreement, tolerance=tolerance)
        if not max_diff <= tolerance:
            raise ConversionError(
                f"{out_path}: not written: the PyTorch model's logits differ from Keras "
                f"by up to {max_diff:.3g} "
                f"(tolerance {tolerance:.3g}; mask agreement {100 * agreement:.3f}%)"
            )

    size = _save_atomically_verified(tensors, out_path, verify_file)
    return ConversionReport(
        path=out_path,
        size_bytes=size,
        half=half,
        num_tensors=len(tensors),
        num_parameters=int(sum(parameter.numel() for parameter in module.parameters())),
        in_channels=config["in_channels"],
        aspp_rates=tuple(config["aspp_rates"]),
        reduction=config["reduction"],
        notes=tuple(notes),
        **measured,
    )
