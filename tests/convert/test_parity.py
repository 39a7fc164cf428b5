"""Keras <-> PyTorch parity: the name map, layer-by-layer and end-to-end outputs, round trips and
the torchvision ResNet-34 loader.

All models carry random, non-trivial weights (BatchNorm statistics included) and non-trivial band
statistics, so a swapped statistic, a transposed kernel or a mis-padded convolution shows up as a
difference far above float32 rounding.
"""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import keras
import numpy as np
import pytest
import torch

import solution
from convert.export import build_torch_module, keras_logits, model_config, probe_batch, torch_logits
from convert.name_map import (
    ConversionError,
    check_against,
    iter_weighted_layers,
    keras_to_torch_state_dict,
    torch_to_keras,
    variable_value,
)
from convert.parity import PROBE_STATS as STATS
from convert.parity import STAGES, randomize_weights, stage_differences
from convert.pretrained import load_torchvision_resnet
from keras_glacier import xla_cpu
from keras_glacier.model import build_deeplab

LOGIT_TOLERANCE = 1e-4
#: Intermediate stages are compared relative to their own magnitude (they reach tens to hundreds).
STAGE_RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _xla_cpu_kernels():
    """Parity of the network CPU users train and export: this package's XLA:CPU kernels (the suite's
    default is the stock ops, tests/conftest.py; the stock path's parity is tests/model/test_stock_path.py's)."""
    with xla_cpu.kernels("auto"):
        yield


@pytest.fixture(scope="module", params=["resnet34", "resnet18"])
def keras_model(request):
    """A model of each encoder: every parity test below holds for both."""
    model = build_deeplab(num_bands=5, stats=STATS, encoder=request.param)
    randomize_weights(model, seed=0)
    return model


@pytest.fixture(scope="module")
def converted(keras_model):
    return keras_to_torch_state_dict(keras_model)


@pytest.fixture(scope="module")
def torch_module(keras_model, converted):
    module = build_torch_module(model_config(keras_model))
    module.load_state_dict({key: torch.from_numpy(value) for key, value in converted.items()}, strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def scratch_model(keras_model):
    """A second model of the same encoder that the loading tests overwrite (each test checks every
    weight it loads)."""
    return build_deeplab(num_bands=5, encoder=keras_model.encoder)


def _weights_by_path(model):
    return {
        f"{path}/{variable.name}": variable_value(variable)
        for path, layer in iter_weighted_layers(model)
        for variable in layer.weights
    }


def _assert_logits_match(reference, other):
    assert reference.shape == other.shape
    assert np.isfinite(reference).all() and np.isfinite(other).all()
    diff = np.abs(reference - other).max()
    assert diff <= LOGIT_TOLERANCE, f"max |logit diff| {diff:.3g} > {LOGIT_TOLERANCE}"
    decided = np.abs(reference) >= LOGIT_TOLERANCE
    assert np.array_equal((reference > 0)[decided], (other > 0)[decided])


# --- the name map -------------------------------------------------------------------------------


def test_converted_state_dict_matches_module_names_and_shapes(keras_model, converted):
    reference = solution.AttentionDeepLabV3Plus(in_channels=5, encoder=keras_model.encoder).state_dict()
    check_against(reference, converted)
    counters = [value for key, value in converted.items() if key.endswith(".num_batches_tracked")]
    assert len(counters) == sum(key.endswith(".running_var") for key in converted) > 0
    assert all(value.dtype == np.int64 and value.shape == () for value in counters)
    float_values = sum(value.size for value in converted.values() if value.dtype == np.float32)
    assert float_values == keras_model.count_params()  # no Keras weight left out
    assert model_config(keras_model) == {  # the model's own configuration, less the statistics (buffers)
        "num_bands": 5, "band_names": ["B1", "B2", "B3", "B4", "B5"], "task": "binary",
        "class_names": ["background", "glacier"], "class_values": [0, 255], "encoder": keras_model.encoder,
        "aspp_rates": [6, 12, 18],
        "reduction": 16, "dropout": 0.1, "output_stride": 16, "threshold": 0.5,
    }


def test_layouts_follow_the_spec(keras_model, converted):
    backbone = keras_model.get_layer("backbone")
    stem = variable_value(backbone.get_layer("conv1").kernel)  # (7, 7, 5, 64)
    assert converted["backbone.conv1.weight"].shape == (64, 5, 7, 7)
    assert converted["backbone.conv1.weight"][10, 3, 1, 6] == stem[1, 6, 3, 10]
    depthwise = variable_value(keras_model.get_layer("decoder.sep1.depthwise").kernel)
    assert converted["decoder.sep1.depthwise.weight"].shape == (304, 1, 3, 3)
    assert converted["decoder.sep1.depthwise.weight"][200, 0, 0, 2] == depthwise[0, 2, 200, 0]
    fc1 = keras_model.get_layer("aspp.b2.cbam.ca.fc1")
    assert converted["aspp.b2.cbam.ca.fc1.weight"].shape == (16, 256)
    assert converted["aspp.b2.cbam.ca.fc1.weight"][3, 100] == variable_value(fc1.kernel)[100, 3]
    bn = backbone.get_layer("layer3.1.bn2")
    for keras_name, torch_name in [
        ("gamma", "weight"),
        ("beta", "bias"),
        ("moving_mean", "running_mean"),
        ("moving_variance", "running_var"),
    ]:
        expected = variable_value(getattr(bn, keras_name))
        np.testing.assert_array_equal(converted[f"backbone.layer3.1.bn2.{torch_name}"], expected)
    for name, values in STATS.items():
        np.testing.assert_array_equal(converted[f"normalize.{name}"], np.float32(values))


def test_check_against_names_every_problem(converted):
    reference = {key: value for key, value in converted.items() if key != "head.bias"}
    reference["extra.weight"] = np.zeros(3)
    reference["aspp.b0.conv.weight"] = np.zeros((255, 512, 1, 1))
    with pytest.raises(ConversionError) as error:
        check_against(reference, converted)
    message = str(error.value)
    assert "extra.weight" in message  # missing in the converted weights
    assert "head.bias" in message  # not in the module
    assert "aspp.b0.conv.weight: expected (255, 512, 1, 1), got (256, 512, 1, 1)" in message


def test_subclasses_map_like_their_base_and_unknown_weighted_layers_are_errors():
    class MyConv(keras.layers.Conv2D):
        pass

    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, MyConv(3, 3, name="block.conv")(inputs))
    state = keras_to_torch_state_dict(model)
    assert {key: value.shape for key, value in state.items()} == {
        "block.conv.weight": (3, 2, 3, 3),
        "block.conv.bias": (3,),
    }

    odd = keras.Model(inputs, keras.layers.LayerNormalization(name="block.norm")(inputs))
    with pytest.raises(ConversionError, match=r"'block\.norm' of type LayerNormalization has weights"):
        keras_to_torch_state_dict(odd)


# --- numerical parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 64, 64), (1, 96, 160)], ids=["2x64x64", "1x96x160"])
def test_layer_by_layer_parity(keras_model, torch_module, shape):
    rows = stage_differences(keras_model, torch_module, probe_batch(keras_model, shape, seed=7))
    assert [row["stage"] for row in rows] == [*STAGES, "logits"]
    for row in rows:
        assert row["max_abs_value"] > 1e-3, f"stage {row['stage']} is all ~zero: a vacuous comparison"
        allowed = STAGE_RELATIVE_TOLERANCE * max(1.0, row["max_abs_value"])
        assert row["max_abs_diff"] <= allowed, row
    logits = rows[-1]
    assert logits["shape"] == (*shape, 1)
    assert logits["max_abs_diff"] <= LOGIT_TOLERANCE


@pytest.mark.parametrize("shape", [(2, 64, 64), (1, 96, 160)], ids=["2x64x64", "1x96x160"])
def test_end_to_end_logits_and_masks(keras_model, torch_module, shape):
    batch = probe_batch(keras_model, shape, seed=11)
    reference = keras_logits(keras_model, batch)
    assert (reference > 0).mean() > 0.05 and (reference < 0).mean() > 0.05  # both classes present
    _assert_logits_match(reference, torch_logits(torch_module, batch))


def test_end_to_end_512(keras_model, torch_module):
    batch = probe_batch(keras_model, (1, 512, 512), seed=3)
    _assert_logits_match(keras_logits(keras_model, batch), torch_logits(torch_module, batch))


def test_no_data_pixels_become_the_training_mean_on_both_sides(keras_model, torch_module):
    batch = probe_batch(keras_model, (1, 64, 64), seed=5)
    batch[0, :8, :, :] = np.nan  # a no-data stripe (all bands)
    batch[0, 20:30, 20:30, 2] = np.inf  # one band non-finite
    batch[0, 40, 40, :] = -np.inf
    nonfinite = ~np.isfinite(batch)
    # The contract: a non-finite value standardises to 0, i.e. acts as the band's training mean.
    lo, hi = np.float32(STATS["lo"]), np.float32(STATS["hi"])
    as_mean = np.where(nonfinite, lo + np.float32(STATS["mean"]) * (hi - lo), batch).astype(np.float32)

    keras_nan, torch_nan = keras_logits(keras_model, batch), torch_logits(torch_module, batch)
    _assert_logits_match(keras_nan, torch_nan)
    np.testing.assert_allclose(keras_nan, keras_logits(keras_model, as_mean), atol=1e-5)
    np.testing.assert_allclose(torch_nan, torch_logits(torch_module, as_mean), atol=1e-5)


# --- torch -> keras -----------------------------------------------------------------------------


def test_round_trip_keras_torch_keras_is_exact(keras_model, converted, scratch_model):
    state = {key: torch.from_numpy(value) for key, value in converted.items()}
    used = torch_to_keras(state, scratch_model)
    assert used == set(state)
    original, loaded = _weights_by_path(keras_model), _weights_by_path(scratch_model)
    assert original.keys() == loaded.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_torch_to_keras_refuses_bad_state_dict_and_leaves_model_untouched(converted, scratch_model):
    before = _weights_by_path(scratch_model)
    state = {key: torch.from_numpy(value) for key, value in converted.items()}
    del state["decoder.sep2.bn.running_var"]
    state["head.weight"] = torch.zeros(2, 256, 1, 1)
    state["surplus.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as error:
        torch_to_keras(state, scratch_model)
    message = str(error.value)
    assert "decoder.sep2.bn.running_var" in message
    assert "head.weight: expected (1, 256, 1, 1), got (2, 256, 1, 1)" in message
    assert "surplus.weight" in message
    after = _weights_by_path(scratch_model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_both_sides_know_the_same_encoders():
    """solution.py imports nothing from the package, so it keeps its own table: the two must agree."""
    from keras_glacier.constants import DEFAULT_ENCODER, ENCODERS

    assert solution.ENCODERS == ENCODERS
    assert solution.CONFIG_DEFAULTS["encoder"] == DEFAULT_ENCODER


# --- torchvision ResNet-18 / ResNet-34 ----------------------------------------------------------


def _torchvision_state(seed: int, encoder: str) -> dict:
    """Random tensors in torchvision's resnet18/34 layout: the twin's backbone names + RGB stem + fc."""
    generator = torch.Generator().manual_seed(seed)
    prefix = "backbone."
    shapes = {
        key[len(prefix) :]: value
        for key, value in solution.AttentionDeepLabV3Plus(in_channels=5, encoder=encoder).state_dict().items()
        if key.startswith(prefix)
    }
    state = {}
    for key, value in shapes.items():
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=generator)
        else:
            state[key] = torch.tensor(7, dtype=torch.int64)
    state["conv1.weight"] = torch.randn((64, 3, 7, 7), generator=generator)
    state["fc.weight"] = torch.randn((1000, 512), generator=generator)
    state["fc.bias"] = torch.randn((1000,), generator=generator)
    return state


def test_torchvision_resnet_loads_into_backbone_with_adapted_stem(scratch_model, tmp_path):
    state = _torchvision_state(seed=1, encoder=scratch_model.encoder)
    path = tmp_path / f"{scratch_model.encoder}.pth"
    torch.save(state, path)
    head_before = variable_value(scratch_model.get_layer("head").kernel)

    used = load_torchvision_resnet(path, scratch_model)

    assert used == {key for key in state if not key.startswith("fc.")}
    loaded = keras_to_torch_state_dict(scratch_model)
    rgb = state["conv1.weight"].numpy()
    stem = loaded["backbone.conv1.weight"]
    assert stem.shape == (64, 5, 7, 7)
    for band in range(5):  # band k gets RGB filter k % 3, scaled by 3/5
        np.testing.assert_allclose(stem[:, band], rgb[:, band % 3] * 0.6, rtol=1e-6, atol=0)
    for key, value in state.items():
        if key.startswith("fc.") or key == "conv1.weight" or key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_array_equal(loaded[f"backbone.{key}"], value.numpy(), err_msg=key)
    np.testing.assert_array_equal(variable_value(scratch_model.get_layer("head").kernel), head_before)
    # The bare backbone model is accepted too (its layers then carry no "backbone." prefix).
    assert load_torchvision_resnet(path, scratch_model.get_layer("backbone")) == used


def test_torchvision_loader_names_the_file_and_first_missing_key(scratch_model, tmp_path):
    state = _torchvision_state(seed=2, encoder=scratch_model.encoder)
    del state["layer3.1.conv1.weight"]
    truncated = tmp_path / "truncated.pth"
    torch.save(state, truncated)
    with pytest.raises(ConversionError, match=r"truncated\.pth: .*first missing key: 'layer3\.1\.conv1\.weight'"):
        load_torchvision_resnet(truncated, scratch_model)

    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ConversionError, match=r"notes\.pth: not a PyTorch state dict file"):
        load_torchvision_resnet(garbage, scratch_model)

    with pytest.raises(ConversionError, match=r"absent\.pth: no such file"):
        load_torchvision_resnet(tmp_path / "absent.pth", scratch_model)


def test_weights_of_the_other_encoder_are_refused_naming_both(scratch_model, tmp_path):
    other = "resnet34" if scratch_model.encoder == "resnet18" else "resnet18"
    path = tmp_path / f"{other}.pth"
    torch.save(_torchvision_state(seed=3, encoder=other), path)
    before = _weights_by_path(scratch_model)
    with pytest.raises(ConversionError, match=rf"{other}\.pth: torchvision {other} weights, but the model's encoder "
                                              rf"is {scratch_model.encoder} \(train with --encoder {other}"):
        load_torchvision_resnet(path, scratch_model)
    after = _weights_by_path(scratch_model)
    assert all(np.array_equal(before[name], after[name]) for name in before)
