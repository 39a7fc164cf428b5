"""model.pth with its configuration, multi-class masks, ensembles and the time budget (torch only)."""

import numpy as np
import pytest
import tifffile
import torch

import solution
from solution import GlacierEnsemble, InputError, TimeBudget, load_model, maskgeration
from tests.solution_fixtures import (
    make_test_model,
    multiclass_config,
    save_model_pth,
    save_weights,
    scene,
    write_band_dataset,
)

BINARY = {"num_bands": 5, "task": "binary", "class_names": ["background", "glacier"], "class_values": [0, 255]}


@pytest.fixture(scope="module")
def three_class():
    return make_test_model(config=multiclass_config(), seed=3)


@pytest.fixture(scope="module")
def data(module_tmp):
    root = module_tmp("bands")
    images = write_band_dataset(root, ids=("02_07", "03_01"), size=(32, 48))
    return root, images


def reference_probabilities(model, image):
    """Independent of the driver: the mean over the four flips of the model's probabilities."""
    x = torch.from_numpy(np.ascontiguousarray(solution.pad_to_multiple(image)[0].transpose(2, 0, 1)))[None]
    with torch.no_grad():
        views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
        outs = [model.probabilities(v) for v in views]
        outs = [outs[0], outs[1].flip(3), outs[2].flip(2), outs[3].flip(2).flip(3)]
    mean = torch.stack(outs).mean(0)[0].numpy().transpose(1, 2, 0)
    return mean[: image.shape[0], : image.shape[1]]


def test_model_pth_carries_the_configuration_and_loads_weights_only(tmp_path):
    config = {**BINARY, "band_names": ["B1", "B2", "B3", "B5", "B6_VCID1"], "aspp_rates": [4, 8, 12],
              "reduction": 8, "dropout": 0.2, "threshold": 0.35, "output_stride": 16}
    model = solution.AttentionDeepLabV3Plus.from_config(config)
    path = save_model_pth(model, tmp_path / "model.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "keras-glacier/1" and raw["config"]["aspp_rates"] == [4, 8, 12]
    loaded = load_model(path, "cpu")
    assert loaded.config["threshold"] == 0.35 and loaded.config["band_names"] == config["band_names"]
    assert loaded.aspp.b1.conv.dilation == (4, 4) and loaded.aspp.b0.cbam.ca.fc1.out_features == 32
    assert loaded.aspp.dropout.p == 0.2 and loaded.num_outputs == 1


def test_a_resnet18_model_pth_builds_two_blocks_a_stage_and_older_files_mean_resnet34(tmp_path):
    model = make_test_model(config={**BINARY, "encoder": "resnet18"}, seed=4)
    assert [len(getattr(model.backbone, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    loaded = load_model(save_model_pth(model, tmp_path / "small.pth"), "cpu")
    assert loaded.config["encoder"] == "resnet18" and len(loaded.backbone.layer3) == 2
    x = torch.from_numpy(scene(32, 32, seed=2).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    older = load_model(save_model_pth(make_test_model(), tmp_path / "older.pth", dict(BINARY)), "cpu")
    assert older.config["encoder"] == "resnet34" and len(older.backbone.layer3) == 6


def test_bare_state_dict_of_earlier_versions_is_a_binary_model(tmp_path):
    model = make_test_model(in_channels=4)
    loaded = load_model(save_weights(model, tmp_path / "bare.pth"), "cpu")
    assert loaded.in_channels == 4 and loaded.config["task"] == "binary"
    assert loaded.config["threshold"] == 0.5 and loaded.config["class_values"] == [0, 255]


def test_three_class_config_builds_a_three_logit_head(tmp_path, three_class):
    path = save_model_pth(three_class, tmp_path / "mc.pth")
    loaded = load_model(path, "cpu")
    assert loaded.head.out_channels == 3 and loaded.config["class_values"] == [0, 85, 170]
    x = torch.from_numpy(scene(32, 32, seed=1).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        probabilities = loaded.probabilities(x)
        torch.testing.assert_close(probabilities, torch.softmax(three_class(x), dim=1))
    # A bare state dict with a K-class head cannot say which classes: refused, not guessed.
    with pytest.raises(InputError, match="carries no class names"):
        load_model(save_weights(three_class, tmp_path / "bare_mc.pth"), "cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "segmentation"}, "task must be 'binary' or 'multiclass'"),
        (
            {"class_names": ["background", "glacier", "moraine"], "class_values": None},
            "no phase-2 value for class 'moraine'",
        ),
        ({"class_values": [0, 85]}, "must give one value per class"),
        ({"class_values": [0, 85, 300]}, "integers in 0..255"),
        ({"threshold": 1.5}, "threshold must be a number in"),
        ({"output_stride": 8}, "output_stride 8 is not supported"),
        ({"num_bands": 4}, "weights do not fit"),
        ({"encoder": "resnet50"}, "encoder must be one of resnet18, resnet34, got 'resnet50'"),
        ({"encoder": "resnet18"}, "weights do not fit"),  # a ResNet-34's weights under a ResNet-18 label
    ],
)
def test_bad_configurations_are_one_line_errors_naming_the_file(tmp_path, three_class, change, message):
    path = tmp_path / "bad.pth"
    save_model_pth(three_class, path, {**three_class.config, **change})
    with pytest.raises(InputError, match=message) as info:
        load_model(path, "cpu")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_unknown_format_and_rates_that_contradict_the_weights(tmp_path, three_class):
    path = tmp_path / "future.pth"
    torch.save({"format": "keras-glacier/9", "config": {}, "state_dict": {}}, path)
    with pytest.raises(InputError, match="unknown model file format 'keras-glacier/9'"):
        load_model(path, "cpu")
    state = dict(three_class.state_dict())
    torch.save({"format": "keras-glacier/1", "config": {**three_class.config, "aspp_rates": [2, 4, 6]},
                "state_dict": state}, path)
    with pytest.raises(InputError, match=r"aspp_rates \[2, 4, 6\] differ from the weights' \[6, 12, 18\]"):
        load_model(path, "cpu")


def test_multiclass_masks_are_the_argmax_of_the_tta_mean_written_as_phase2_values(tmp_path, data, three_class):
    root, images = data
    weights = save_model_pth(three_class, tmp_path / "mc.pth")
    out = tmp_path / "out"
    masks = maskgeration(str(root), out, weights=weights, device="cpu", progress=False, time_budget=0)
    for tile_id, image in images.items():
        expected_classes = np.argmax(reference_probabilities(three_class, image), axis=-1)
        expected = np.array([0, 85, 170], np.uint8)[expected_classes]
        assert masks[tile_id].dtype == np.uint8
        np.testing.assert_array_equal(masks[tile_id], expected)
        written = tifffile.imread(out / f"B2_B2_masked_{tile_id}.tif")
        np.testing.assert_array_equal(written, expected)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) == {0, 85, 170}


def test_multiclass_nodata_pixels_are_background(tmp_path, three_class):
    root = tmp_path / "bands"
    images = write_band_dataset(root, ids=("01",), size=(32, 32), seed=5)
    band1 = root / "Band1" / "B2_B2_masked_01.tif"
    array = tifffile.imread(band1)
    array[:8, :8] = np.nan
    tifffile.imwrite(band1, array)
    masks = maskgeration(str(root), None, weights=save_model_pth(three_class, tmp_path / "mc.pth"),
                         device="cpu", progress=False, time_budget=0)
    assert (masks["01"][:8, :8] == 0).all() and images  # background = 0
    assert (masks["01"][8:, 8:] != 0).any()


def test_four_class_band_folder_encoding(tmp_path):
    names = ["background", "glacier", "debris", "lake"]
    model = make_test_model(config=multiclass_config(class_names=names), seed=8)
    assert model.config["class_values"] == [0, 85, 170, 255]
    classes = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(solution.encode_classes(classes, model.config), [[0, 85], [170, 255]])
    probabilities = np.zeros((2, 2, 4), np.float32)
    probabilities[..., 3] = 0.4
    probabilities[0, 0, 1] = 0.6
    np.testing.assert_array_equal(solution.classify(probabilities, model.config), [[1, 3], [3, 3]])


def test_binary_threshold_comes_from_the_configuration(tmp_path, data):
    root, images = data
    model = make_test_model(seed=2)
    masks = {}
    for threshold in (0.5, 0.7):
        weights = save_model_pth(model, tmp_path / f"t{threshold}.pth", {**BINARY, "threshold": threshold})
        masks[threshold] = maskgeration(str(root), None, weights=weights, device="cpu", progress=False,
                                        time_budget=0)
    for tile_id, image in images.items():
        probability = reference_probabilities(model, image)[..., 0]
        for threshold, result in masks.items():
            np.testing.assert_array_equal(result[tile_id], (probability > threshold).astype(np.uint8))
    assert any((masks[0.5][t] != masks[0.7][t]).any() for t in images)


def _ensemble_file(path, members):
    torch.save({"format": "keras-glacier-ensemble/1",
                "members": [{"config": dict(c), "state_dict": m.state_dict()} for m, c in members]}, path)
    return path


def test_ensemble_averages_the_members_probabilities(tmp_path, data, three_class):
    root, images = data
    other = make_test_model(config=multiclass_config(), seed=4)
    path = _ensemble_file(tmp_path / "ens.pth", [(three_class, three_class.config), (other, other.config)])
    loaded = load_model(path, "cpu")
    assert isinstance(loaded, GlacierEnsemble) and len(loaded.members) == 2
    masks = maskgeration(str(root), None, weights=path, device="cpu", progress=False, time_budget=0)
    for tile_id, image in images.items():
        mean = (reference_probabilities(three_class, image) + reference_probabilities(other, image)) / 2
        np.testing.assert_array_equal(masks[tile_id], np.array([0, 85, 170], np.uint8)[np.argmax(mean, -1)])


def test_binary_ensemble_uses_the_mean_threshold_and_members_must_agree(tmp_path, three_class):
    a, b = make_test_model(seed=2), make_test_model(seed=6)
    path = _ensemble_file(tmp_path / "bin.pth", [(a, {**BINARY, "threshold": 0.3}), (b, {**BINARY, "threshold": 0.5})])
    assert load_model(path, "cpu").config["threshold"] == pytest.approx(0.4)
    four = make_test_model(config=multiclass_config(class_names=["background", "glacier", "debris"]), seed=1)
    mixed = _ensemble_file(tmp_path / "mixed.pth", [(three_class, three_class.config), (four, four.config)])
    with pytest.raises(InputError, match="ensemble members disagree: member 2 has class_names"):
        load_model(mixed, "cpu")


def test_time_budget_projection_drops_views_only_when_needed():
    # 10 tiles, 4 views, 1 s per tile-view: 4 s/tile; after 1 tile at t=5, 9 tiles left.
    budget = TimeBudget(60.0, 10, 4, start=0.0)
    message = budget.update(1, 4, 4.0, now=5.0)  # 5 + 9*4 = 41 <= 60: keep four views
    assert message is None and budget.views == 4
    tight = TimeBudget(30.0, 10, 4, start=0.0)
    message = tight.update(1, 4, 4.0, now=5.0)  # four views: 41 > 30; two views: 5 + 18 = 23 <= 30
    assert tight.views == 2 and "continuing with 2 views per tile" in message and "9 tiles left" in message
    tighter = TimeBudget(10.0, 10, 4, start=0.0)
    assert "continuing with 1 view per tile" in tighter.update(1, 4, 4.0, now=5.0)
    assert tighter.update(1, 1, 1.0, now=6.0) is None  # nothing below one view: no more messages


def test_maskgeration_drops_tta_views_when_its_pace_exceeds_the_budget(tmp_path, monkeypatch, capsys):
    root = tmp_path / "bands"
    write_band_dataset(root, ids=("01", "02", "03", "04"), size=(32, 32))
    weights = save_model_pth(make_test_model(seed=2), tmp_path / "m.pth", BINARY)
    clock = iter(float(t) for t in range(0, 10_000, 10))  # every clock reading is 10 s later
    monkeypatch.setattr(solution.time, "perf_counter", lambda: next(clock))
    seen = []
    real = solution.torch_forward

    def counting(model, device=None):
        forward = real(model, device)
        return lambda batch: seen.append(len(batch)) or forward(batch)

    monkeypatch.setattr(solution, "torch_forward", counting)
    monkeypatch.setenv("GLACIER_TIME_BUDGET", "60")
    masks = maskgeration(str(root), None, weights=weights, device="cpu", batch_size=4, progress=False)
    assert len(masks) == 4
    err = capsys.readouterr().err
    assert err.count("over the time budget of 60 s (GLACIER_TIME_BUDGET); continuing with 1 view") == 1
    # Clock: start 0; tile k is timed from 20k-10 to 20k, i.e. 10 s for its four views (2.5 s a view).
    # After tile 3 (t=60, 1 tile left): 4 views end at 70, 2 at 65, both over 60: the last gets one.
    assert seen == [4, 4, 4, 1]
    capsys.readouterr()
    monkeypatch.setenv("GLACIER_TIME_BUDGET", "0")  # 0 turns the budget off: every tile keeps four views
    seen.clear()
    maskgeration(str(root), None, weights=weights, device="cpu", batch_size=4, progress=False)
    assert seen == [4, 4, 4, 4] and capsys.readouterr().err == ""
    monkeypatch.setenv("GLACIER_TIME_BUDGET", "soon")
    with pytest.raises(InputError, match="GLACIER_TIME_BUDGET='soon': not a number of seconds"):
        maskgeration(str(root), None, weights=weights, device="cpu")
