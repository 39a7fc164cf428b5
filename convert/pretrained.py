"""Initialises the Keras backbone from a torchvision-layout ResNet-18 / ResNet-34 state dict.

``--pretrained FILE`` names the file; ``--pretrained imagenet`` (:func:`resolve_pretrained`) finds
torchvision's ImageNet weights of the model's encoder in the torch hub cache, downloading them there
(checked against the published hash, as torchvision does) where there is internet. The 3-channel RGB
stem is spread over the model's N input bands so that a band-stacked input of RGB-like statistics
produces the same stem activations in expectation as RGB did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import keras
import numpy as np

from convert.name_map import ConversionError, iter_weighted_layers, layer_kind, torch_to_keras
from keras_glacier.constants import DEFAULT_ENCODER, ENCODERS

#: torchvision's ImageNet weights of each encoder (``ResNet18_Weights`` / ``ResNet34_Weights``
#: ``.IMAGENET1K_V1``): the published URL, and the sha256 prefix that torchvision checks, which is
#: also in the file name.
IMAGENET_WEIGHTS = {
    "resnet18": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"),
    "resnet34": ("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
}
PRETRAINED_NAMES = ("imagenet",)

STEM_KEY = "conv1.weight"
IGNORED_PREFIXES = ("fc.",)  # the ImageNet classifier has no counterpart in the segmentation model


def hub_checkpoint_path(url: str = IMAGENET_WEIGHTS[DEFAULT_ENCODER][0]) -> Path:
    """Where torch hub (and torchvision) keep ``url``'s file: ``<torch hub dir>/checkpoints/<name>``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def resolve_pretrained(
    spec: str | Path, encoder: str = DEFAULT_ENCODER, url: str | None = None, hash_prefix: str | None = None,
    progress: bool = False,
) -> Path:
    """The state dict file that ``--pretrained SPEC`` means for a model with this ``encoder``.

    ``imagenet``: torchvision's ImageNet weights of ``encoder`` in the torch hub cache (shared with
    torchvision, so a file it downloaded is reused), downloaded from ``url`` (default: the published
    one, :data:`IMAGENET_WEIGHTS`) when absent and accepted only if its sha256 starts with
    ``hash_prefix``. Anything else is a path to an existing file.
    Raises ConversionInputError with one line: the file missing, the hash wrong, or no network (then
    telling the user where to download the file and to pass it with ``--pretrained FILE``).
    """
    from convert.export import ConversionInputError

    if str(spec).lower() not in PRETRAINED_NAMES:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConversionInputError(
                f"{path}: pretrained weights file not found (give a file or one of: {', '.join(PRETRAINED_NAMES)})"
            )
        return path
    published_url, published_hash = IMAGENET_WEIGHTS[encoder]
    url, hash_prefix = url or published_url, hash_prefix or published_hash
    target = hub_checkpoint_path(url)
    if target.is_file():
        return target
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=progress)
    except RuntimeError as exc:  # torch.hub's "invalid hash value" (the partial file is removed)
        if target.exists():
            target.unlink()
        raise ConversionInputError(
            f"{url}: downloaded file does not match the published hash {hash_prefix} ({' '.join(str(exc).split())})"
        ) from exc
    except (OSError, ValueError) as exc:  # URLError is an OSError: no network, proxy, read-only cache
        raise ConversionInputError(
            f"{target}: ImageNet weights not cached and cannot be downloaded ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); download {url} elsewhere and pass its path with "
            "--pretrained FILE"
        ) from exc
    return target


def adapt_stem(rgb_weight: np.ndarray, num_bands: int) -> np.ndarray:
    """(64, 3, kh, kw) -> (64, N, kh, kw): band k gets RGB filter k % 3, all scaled by 3 / N.

    The rescaling keeps the stem's response to a constant input the same as for 3 channels.
    """
    rgb_weight = np.asarray(rgb_weight, dtype=np.float32)
    channels = rgb_weight.shape[1]
    if channels == num_bands:
        return rgb_weight
    if channels != 3:
        raise ConversionError(
            f"stem '{STEM_KEY}' has {channels} input channels; expected 3 (RGB) or {num_bands}"
        )
    picks = [band % 3 for band in range(num_bands)]
    return rgb_weight[:, picks] * np.float32(3.0 / num_bands)


def _backbone_prefix_map(model: keras.Model) -> dict[str, str] | None:
    """Prefix map that points the bare torchvision names at the model's backbone layers."""
    if model.name == "backbone":
        return None
    try:
        backbone = model.get_layer("backbone")
    except ValueError as exc:
        raise ConversionError(f"model '{model.name}' has no nested model named 'backbone'") from exc
    if not isinstance(backbone, keras.Model):
        raise ConversionError(f"layer 'backbone' of model '{model.name}' is not a nested model")
    return {"backbone.": ""}


def _stem_bands(model: keras.Model, prefix_map: dict[str, str] | None) -> int:
    stem = "backbone.conv1" if prefix_map else "conv1"
    for path, layer in iter_weighted_layers(model):
        if path == stem:
            return int(layer.kernel.shape[2])
    raise ConversionError(f"model '{model.name}' has no stem convolution '{stem}'")


def _read_state_dict(path: Path) -> Mapping[str, object]:
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file it cannot read
        raise ConversionError(f"{path}: not a PyTorch state dict file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise ConversionError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    return state


def blocks_per_stage(names) -> tuple[int, ...]:
    """BasicBlocks in each of layer1..layer4, counted from torchvision-style names (``layer3.5.conv1...``)."""
    blocks = [set() for _ in range(4)]
    for name in names:
        parts = str(name).split(".")
        if len(parts) > 2 and parts[0] in ("layer1", "layer2", "layer3", "layer4") and parts[1].isdigit():
            blocks[int(parts[0][-1]) - 1].add(parts[1])
    return tuple(len(stage) for stage in blocks)


def encoder_name(blocks: tuple[int, ...]) -> str:
    """The encoder with these blocks per stage (``constants.ENCODERS``), or a description of them."""
    return next((name for name, known in ENCODERS.items() if known == blocks), f"a ResNet with blocks {blocks}")


def load_torchvision_resnet(path: str | Path, keras_model: keras.Model) -> set[str]:
    """Loads the backbone weights of ``keras_model`` (whole model or its backbone) from ``path``.

    Returns the state-dict keys that were used. Raises ConversionError naming the file and what is
    wrong when the file is not a torchvision state dict of the model's encoder: weights of the other
    encoder (resnet34 for a resnet18 model, say), the first missing key, or mismatching shapes; the
    model is left untouched then.
    """
    path = Path(path)
    state = _read_state_dict(path)
    prefix_map = _backbone_prefix_map(keras_model)
    layers = list(iter_weighted_layers(keras_model))
    model_encoder = encoder_name(blocks_per_stage(path.removeprefix("backbone.") for path, _ in layers))
    file_encoder = encoder_name(blocks_per_stage(state))
    if STEM_KEY in state and file_encoder != model_encoder and file_encoder in ENCODERS:
        raise ConversionError(
            f"{path}: torchvision {file_encoder} weights, but the model's encoder is {model_encoder} "
            f"(train with --encoder {file_encoder}, or give {model_encoder} weights)"
        )
    expected = []
    for layer_path, layer in layers:
        if prefix_map is None or layer_path.startswith("backbone."):
            name = layer_path[len("backbone.") :] if prefix_map else layer_path
            _, rules = layer_kind(layer)
            names = {variable.name for variable in layer.weights}
            expected += [f"{name}.{rule.torch_suffix}" for rule in rules if rule.keras_name in names]
    first_missing = next((key for key in expected if key not in state), None)
    if first_missing is not None:
        raise ConversionError(
            f"{path}: not a torchvision {model_encoder} state dict (first missing key: '{first_missing}')"
        )
    adapted = {key: value for key, value in state.items() if not key.startswith(IGNORED_PREFIXES)}
    try:
        adapted[STEM_KEY] = adapt_stem(_as_numpy(state[STEM_KEY]), _stem_bands(keras_model, prefix_map))
        return torch_to_keras(adapted, keras_model, prefix_map=prefix_map, strict=True)
    except ConversionError as exc:
        raise ConversionError(f"{path}: not a torchvision {model_encoder} state dict: {exc}") from exc


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)
