"""The PyTorch network in solution.py and loading its weights."""

import numpy as np
import pytest
import torch

import solution
from solution import AttentionDeepLabV3Plus, InputError, load_model
from tests.solution_fixtures import make_test_model, save_weights, scene

RESNET34_BLOCKS = {1: 3, 2: 4, 3: 6, 4: 3}


@pytest.fixture(scope="module")
def model():
    return make_test_model()


@pytest.fixture(scope="module")
def weights(model, module_tmp):
    return save_weights(model, module_tmp("weights") / "model.pth")


def test_parameter_count_and_torchvision_backbone_names(model):
    assert 25_500_000 < sum(p.numel() for p in model.parameters()) < 25_700_000
    keys = set(model.state_dict())
    for layer, blocks in RESNET34_BLOCKS.items():
        for block in range(blocks):
            prefix = f"backbone.layer{layer}.{block}."
            for name in ("conv1.weight", "bn1.running_var", "conv2.weight", "bn2.weight"):
                assert prefix + name in keys
            has_downsample = prefix + "downsample.0.weight" in keys
            assert has_downsample == (block == 0 and layer > 1)
            assert (prefix + "downsample.1.running_mean" in keys) == has_downsample
    assert f"backbone.layer1.{RESNET34_BLOCKS[1]}.conv1.weight" not in keys
    for name in ("normalize.lo", "normalize.hi", "normalize.mean", "normalize.std", "head.bias",
                 "aspp.pool.cbam.ca.fc1.bias", "aspp.b3.cbam.sa.conv.weight", "aspp.project.conv.weight",
                 "decoder.low_proj.conv.weight", "decoder.sep1.depthwise.weight", "decoder.sep2.pointwise.weight"):
        assert name in keys
    assert not any(k.startswith("backbone.fc") for k in keys)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["backbone.conv1.weight"] == (64, 5, 7, 7)
    assert shapes["aspp.b0.cbam.ca.fc1.weight"] == (16, 256)
    assert shapes["aspp.project.conv.weight"] == (256, 1280, 1, 1)
    assert shapes["decoder.sep1.depthwise.weight"] == (304, 1, 3, 3)
    assert shapes["decoder.sep1.pointwise.weight"] == (256, 304, 1, 1)
    assert shapes["head.weight"] == (1, 256, 1, 1)


def test_layer4_is_dilated_with_output_stride_16(model):
    for name, module in model.backbone.layer4.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.stride == (1, 1), name
            if module.kernel_size == (3, 3):
                assert module.dilation == (2, 2) and module.padding == (2, 2), name
    assert model.backbone.layer2[0].conv1.stride == (2, 2)
    assert [m.dilation for m in (model.aspp.b1.conv, model.aspp.b2.conv, model.aspp.b3.conv)] == [
        (6, 6), (12, 12), (18, 18)
    ]
    with torch.inference_mode():
        low, high = model.backbone(torch.zeros(1, 5, 64, 96))
    assert tuple(low.shape) == (1, 64, 16, 24)
    assert tuple(high.shape) == (1, 512, 4, 6)


def test_forward_shapes_and_input_checks(model):
    x = torch.from_numpy(scene(64, 96, seed=1).transpose(2, 0, 1)[None].copy())
    with torch.inference_mode():
        logits = model(torch.cat([x, x.flip(-1)]))
    assert logits.shape == (2, 1, 64, 96) and logits.dtype == torch.float32
    assert float(logits.std()) > 0.1  # the calibrated test model is not constant
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 5, 60, 64))
    with pytest.raises(ValueError, match=r"expected input \(B, 5, H, W\)"):
        model(torch.zeros(1, 4, 64, 64))


def test_band_normalization_matches_the_contract():
    norm = solution.BandNormalization(3)
    lo, hi = np.array([0.0, 10.0, -5.0], np.float32), np.array([100.0, 20.0, 5.0], np.float32)
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.5], np.float32)
    for buffer, value in zip((norm.lo, norm.hi, norm.mean, norm.std), (lo, hi, mean, std)):
        buffer.copy_(torch.from_numpy(value))
    x = np.random.default_rng(0).uniform(-50, 150, (2, 3, 4, 5)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 0, 0] = -np.inf
    with torch.no_grad():
        z = norm(torch.from_numpy(x)).numpy()
    shape = (1, 3, 1, 1)
    u = np.clip((x - lo.reshape(shape)) / (hi - lo).reshape(shape), 0, 1)
    expected = np.where(np.isfinite(x), (u - mean.reshape(shape)) / std.reshape(shape), 0)
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)


def test_cbam_matches_the_formula():
    torch.manual_seed(3)
    cbam = solution.CBAM(32, reduction=16).eval()
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        fc = cbam.ca

        def mlp(v):
            return fc.fc2(torch.relu(fc.fc1(v)))

        a = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
        y = x * a
        s = torch.cat([y.amax(1, keepdim=True), y.mean(1, keepdim=True)], 1)  # max first
        expected = y * torch.sigmoid(torch.nn.functional.conv2d(s, cbam.sa.conv.weight, padding=3))
        torch.testing.assert_close(cbam(x), expected)


def test_load_model_round_trip_and_float16(model, weights, tmp_path):
    x = torch.from_numpy(scene(64, 64, seed=2).transpose(2, 0, 1)[None].copy())
    loaded = load_model(weights, "cpu")
    assert not loaded.training and loaded.in_channels == 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    half = load_model(save_weights(model, tmp_path / "half.pth", half=True), "cpu")
    assert all(v.dtype == torch.float32 for v in half.state_dict().values() if v.is_floating_point())
    with torch.inference_mode():
        torch.testing.assert_close(half(x), model(x), atol=0.05, rtol=0.05)


def test_load_model_accepts_wrapped_prefixed_or_incomplete_bn_counters(model, tmp_path):
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    loaded = load_model(tmp_path / "wrapped.pth", "cpu")
    torch.testing.assert_close(loaded.head.weight, model.head.weight)


def test_load_model_infers_in_channels(tmp_path):
    three = AttentionDeepLabV3Plus(in_channels=3)
    loaded = load_model(save_weights(three, tmp_path / "three.pth"), "cpu")
    assert loaded.in_channels == 3
    assert loaded.backbone.conv1.weight.shape[1] == 3


def test_load_model_reports_incompatible_weights(model, tmp_path):
    state = dict(model.state_dict())
    del state["aspp.b2.bn.weight"]
    state["aspp.b9.conv.weight"] = torch.zeros(1)
    state["decoder.low_proj.conv.weight"] = torch.zeros(32, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as info:
        load_model(path, "cpu")
    message = str(info.value)
    assert message.startswith(f"{path}: weights do not fit AttentionDeepLabV3Plus(in_channels=5, num_outputs=1)")
    assert "missing keys: aspp.b2.bn.weight" in message
    assert "unexpected keys: aspp.b9.conv.weight" in message
    assert "decoder.low_proj.conv.weight expected (48, 64, 1, 1) got (32, 64, 1, 1)" in message


def test_load_model_refuses_weights_a_diverged_training_left_non_finite(model, tmp_path):
    """NaN logits would threshold to all-background masks: the file is refused, naming the tensors."""
    for bad in (float("nan"), float("inf")):
        state = dict(model.state_dict())
        state["aspp.b1.conv.weight"] = state["aspp.b1.conv.weight"].clone()
        state["aspp.b1.conv.weight"][0, 0, 0, 0] = bad
        path = save_weights(model, tmp_path / "diverged.pth")
        torch.save(state, path)
        with pytest.raises(InputError) as info:
            load_model(path, "cpu")
        assert str(info.value) == (f"{path}: weights hold NaN or infinite values (aspp.b1.conv.weight): the network "
                                   "diverged in training; train it again (e.g. at a lower --lr)")


def test_load_model_reports_missing_corrupt_or_pickled_files(model, tmp_path):
    with pytest.raises(InputError, match=r"nope.pth: model weights not found"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"corrupt.pth: cannot load model weights") as info:
        load_model(tmp_path / "corrupt.pth")
    assert "\n" not in str(info.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match=r"list.pth: expected a state dict of tensors, got list"):
        load_model(tmp_path / "list.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not a state dict
    with pytest.raises(InputError, match=r"module.pth: (cannot load model weights|expected a state dict)"):
        load_model(tmp_path / "module.pth")
