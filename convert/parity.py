"""Layer-by-layer comparison of the Keras model and its PyTorch twin (used by tests and benchmarks).

Intermediate tensors are located only through the weighted layers, whose names the README's "Architecture" fixes on
both sides (e.g. the output of ResNet stage 2 is the input of ``layer3.0.downsample.0``), so the probes
do not depend on how either side names its weightless helper layers.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from convert.export import probe_batch
from convert.name_map import iter_weighted_layers, variable_value

#: Band statistics for parity probes and benchmarks: raw reflectance-like units, unequal per band, so
#: that normalisation is exercised (one definition for the tests and benchmarks that compare frameworks).
PROBE_STATS = {
    "lo": [120.0, 300.0, 80.0, 900.0, 10.0],
    "hi": [4000.0, 5200.0, 6100.0, 7000.0, 900.0],
    "mean": [0.4, 0.5, 0.45, 0.3, 0.6],
    "std": [0.2, 0.3, 0.25, 0.1, 0.2],
}


def _relu(array: np.ndarray) -> np.ndarray:
    return np.maximum(array, 0.0)


def _first_256(array: np.ndarray) -> np.ndarray:
    return array[..., :256]


#: stage -> (Keras probe, post-processing of the Keras value, torch module path, hook kind).
#: Keras probe: ("top" | "backbone", layer name, "input" | "output") or ("backbone", index, "model_output").
#: Hook kind: "output" (forward hook) or "input" (forward pre-hook, first positional input).
STAGES: dict[str, tuple[tuple, Callable[[np.ndarray], np.ndarray] | None, str, str]] = {
    "normalize": (("top", "normalize", "output"), None, "normalize", "output"),
    "backbone.stem": (("backbone", "layer1.0.conv1", "input"), None, "backbone.maxpool", "output"),
    "backbone.layer1 (low)": (("backbone", 0, "model_output"), None, "backbone.layer1", "output"),
    "backbone.layer2": (("backbone", "layer3.0.downsample.0", "input"), None, "backbone.layer2", "output"),
    "backbone.layer3": (("backbone", "layer4.0.downsample.0", "input"), None, "backbone.layer3", "output"),
    "backbone.layer4 (high)": (("backbone", 1, "model_output"), None, "backbone.layer4", "output"),
    "aspp.b0.cbam.sa.conv": (("top", "aspp.b0.cbam.sa.conv", "output"), None, "aspp.b0.cbam.sa.conv", "output"),
    "aspp.b0.cbam": (("top", "aspp.project.conv", "input"), _first_256, "aspp.b0.cbam", "output"),
    "aspp branches (concat)": (("top", "aspp.project.conv", "input"), None, "aspp.project.conv", "input"),
    "aspp": (("top", "aspp.project.bn", "output"), _relu, "aspp", "output"),
    "decoder.low_proj": (("top", "decoder.low_proj.bn", "output"), _relu, "decoder.low_proj", "output"),
    "decoder.sep1 input (concat)": (
        ("top", "decoder.sep1.depthwise", "input"),
        None,
        "decoder.sep1.depthwise",
        "input",
    ),
    "decoder": (("top", "head", "input"), None, "decoder", "output"),
    "head": (("top", "head", "output"), None, "head", "output"),
}


def _symbolic(model: keras.Model, name: str, which: str):
    layer = model.get_layer(name)
    return layer.input if which == "input" else layer.output


def keras_stage_outputs(model: keras.Model, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every stage of STAGES plus "logits" for a (B, H, W, C) batch, channels-last, inference mode."""
    backbone = model.get_layer("backbone")
    top = [(stage, spec) for stage, spec in STAGES.items() if spec[0][0] == "top"]
    inner = [(stage, spec) for stage, spec in STAGES.items() if spec[0][0] == "backbone"]
    top_probe = keras.Model(model.inputs[0], [_symbolic(model, *spec[0][1:]) for _, spec in top] + [model.output])
    top_values = [keras.ops.convert_to_numpy(v) for v in top_probe(batch, training=False)]
    outputs = {stage: value for (stage, _), value in zip(top, top_values)}
    outputs["logits"] = top_values[-1]

    def backbone_tensor(probe):
        _, name, which = probe
        return backbone.outputs[name] if which == "model_output" else _symbolic(backbone, name, which)

    inner_probe = keras.Model(backbone.inputs[0], [backbone_tensor(spec[0]) for _, spec in inner])
    inner_values = inner_probe(outputs["normalize"], training=False)
    outputs.update({stage: keras.ops.convert_to_numpy(v) for (stage, _), v in zip(inner, inner_values)})
    for stage, (_, post, _, _) in STAGES.items():
        outputs[stage] = np.asarray(post(outputs[stage]) if post else outputs[stage], dtype=np.float32)
    outputs["logits"] = np.asarray(outputs["logits"], dtype=np.float32)
    return outputs


def torch_stage_outputs(module, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The same stages from the PyTorch module through hooks, transposed to channels-last."""
    import torch

    captured: dict[str, torch.Tensor] = {}
    handles = []
    for stage, (_, _, path, kind) in STAGES.items():
        submodule = module.get_submodule(path)

        # Clone: the twin's in-place ReLUs would otherwise overwrite a captured BN/conv output.
        def keep(value, stage=stage):
            captured[stage] = value.detach().clone()

        if kind == "input":
            handles.append(submodule.register_forward_pre_hook(lambda _m, args, keep=keep: keep(args[0])))
        else:
            handles.append(submodule.register_forward_hook(lambda _m, _args, out, keep=keep: keep(out)))
    try:
        with torch.no_grad():
            logits = module(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
    finally:
        for handle in handles:
            handle.remove()
    outputs = {stage: value.float().numpy().transpose(0, 2, 3, 1) for stage, value in captured.items()}
    outputs["logits"] = logits.float().numpy().transpose(0, 2, 3, 1)
    return outputs


def stage_differences(model: keras.Model, module, batch: np.ndarray) -> list[dict]:
    """Per stage: max |Keras - torch|, the stage's max |value| (for scale) and its shape."""
    keras_out = keras_stage_outputs(model, batch)
    torch_out = torch_stage_outputs(module, batch)
    rows = []
    for stage in [*STAGES, "logits"]:
        reference, other = keras_out[stage], torch_out[stage]
        if reference.shape != other.shape:
            raise ValueError(f"stage '{stage}': Keras shape {reference.shape} != PyTorch shape {other.shape}")
        rows.append(
            {
                "stage": stage,
                "max_abs_diff": float(np.max(np.abs(reference.astype(np.float64) - other))),
                "max_abs_value": float(np.max(np.abs(reference))),
                "shape": tuple(reference.shape),
            }
        )
    return rows


def randomize_weights(model: keras.Model, seed: int = 0, logit_scale: float = 8.0) -> None:
    """Gives every weight a random, non-trivial value, with logits spread over about +-logit_scale.

    Convolutions and dense layers get variance-preserving (LeCun) normal kernels; BatchNorm gets
    random gamma, beta, moving mean and variance so that a swapped or transposed statistic shows.
    The head is then rescaled and shifted (an exact affine change of the logits) so that logits are
    of the magnitude of a trained model's and both mask classes occur.
    """
    rng = np.random.default_rng(seed)
    for _, layer in iter_weighted_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            size = int(layer.gamma.shape[0])
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, size),
                    rng.normal(0.0, 0.2, size),
                    rng.normal(0.0, 0.2, size),
                    rng.uniform(0.5, 2.0, size),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
            shape = tuple(layer.kernel.shape)
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            fan_in = int(np.prod(shape[:2] if depthwise else shape[:-1]))
            weights = [rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)]
            if layer.use_bias:
                weights.append(rng.normal(0.0, 0.1, tuple(layer.bias.shape)))
            layer.set_weights(weights)
    head = model.get_layer("head")
    kernel, bias = variable_value(head.kernel), variable_value(head.bias)
    logits = keras.ops.convert_to_numpy(model(probe_batch(model, (1, 64, 64), seed), training=False))
    centre = float(np.median(logits))
    factor = logit_scale / max(float(np.max(np.abs(logits - centre))), 1e-6)
    head.set_weights([kernel * factor, (bias - centre) * factor])
