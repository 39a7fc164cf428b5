"""``python -m convert RUN_A RUN_B -o model.pth``: one ensemble file, float16 when needed, parity per member."""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import warnings

import numpy as np
import pytest
import torch

import convert.export
import solution
from convert.__main__ import main
from convert.export import keras_logits, load_keras_model, probe_batch, torch_logits
from convert.parity import randomize_weights
from keras_glacier.model import build_deeplab

STATS = {"lo": [0.0, 10.0, 20.0], "hi": [100.0, 200.0, 400.0], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
BANDS = ["B1", "B2", "B3"]


def _save(model, folder, threshold=None):
    """A run folder holding ``model`` (its threshold, chosen in training, saved with it)."""
    folder.mkdir()
    if threshold is not None:
        model.threshold = threshold
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def runs(module_tmp):
    """Two runs of one architecture with different weights and thresholds (e.g. two folds)."""
    root = module_tmp("runs")
    model = build_deeplab(num_bands=3, band_names=BANDS, stats=STATS)
    randomize_weights(model, seed=11)
    run_a = _save(model, root / "fold0", 0.4)
    randomize_weights(model, seed=12)
    run_b = _save(model, root / "fold1", 0.6)
    return run_a, run_b


def test_two_runs_make_one_float16_ensemble_checked_member_by_member(runs, tmp_path, capsys):
    out = tmp_path / "model.pth"
    assert main([str(runs[0]), str(runs[1]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    # Two ResNet-34 DeepLabs are ~205 MB in float32, over the 200 MB limit: float16 without asking.
    assert "an ensemble of 2 networks" in printed and "float16" in printed
    assert "stored as float16 to stay under the 200 MB limit" in printed
    assert "(worst member)" in printed
    assert out.stat().st_size <= convert.export.MAX_BYTES

    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier-ensemble/1" and len(content["members"]) == 2
    assert [m["config"]["threshold"] for m in content["members"]] == [0.4, 0.6]
    assert all(m["config"]["band_names"] == BANDS for m in content["members"])

    ensemble = solution.load_model(out, "cpu")
    assert isinstance(ensemble, solution.GlacierEnsemble)
    assert ensemble.config["threshold"] == pytest.approx(0.5)
    batch = probe_batch(load_keras_model(runs[0]), (1, 64, 64), seed=3)
    probabilities = []
    for run, member in zip(runs, ensemble.members):
        reference = keras_logits(load_keras_model(run), batch)
        logits = torch_logits(member, batch)
        assert np.abs(reference - logits).max() <= max(5e-2, 1e-2 * np.abs(reference).max())
        probabilities.append(1 / (1 + np.exp(-logits)))
    with torch.no_grad():
        mean = ensemble.probabilities(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(mean.transpose(0, 2, 3, 1), np.mean(probabilities, axis=0), atol=1e-5)


def test_one_members_ensemble_over_the_limit_is_stored_in_float16_by_the_training_export(runs, tmp_path, capsys):
    """``train --members 2`` with ResNet-34 (the demo's and HKH's encoder) saves one GlacierEnsemble and
    exports it with ``convert_model`` and no flags, as ``python -m convert RUN`` does: ~205 MB in float32."""
    from convert import convert_model
    from keras_glacier.model import GlacierEnsemble

    ensemble = GlacierEnsemble([load_keras_model(run) for run in runs], threshold=0.45)
    report = convert_model(ensemble, tmp_path / "model.pth")
    assert report.half and "stored as float16 to stay under the 200 MB limit" in report.summary()
    assert report.max_abs_diff <= report.tolerance
    content = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier-ensemble/1" and len(content["members"]) == 2
    assert {t.dtype for m in content["members"] for t in m["state_dict"].values() if t.is_floating_point()} == {
        torch.float16}
    assert [m["config"]["threshold"] for m in content["members"]] == [0.45, 0.45]

    folder = tmp_path / "members-run"
    _save(ensemble, folder)
    assert main([str(folder), "-o", str(tmp_path / "cli.pth"), "--no-verify"]) == 0
    assert "stored as float16 to stay under the 200 MB limit" in capsys.readouterr().out
    assert (tmp_path / "cli.pth").stat().st_size <= convert.export.MAX_BYTES


def test_one_network_under_the_limit_stays_float32(runs, tmp_path, capsys):
    assert main([str(runs[0]), "-o", str(tmp_path / "model.pth"), "--no-verify"]) == 0
    assert "float16" not in capsys.readouterr().out
    content = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=True)
    assert {t.dtype for t in content["state_dict"].values() if t.is_floating_point()} == {torch.float32}


def test_an_ensemble_over_the_limit_even_in_float16_is_refused_with_its_size(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert.export, "MAX_BYTES", 60_000_000)
    out = tmp_path / "model.pth"
    assert main([str(runs[0]), str(runs[1]), "-o", str(out), "--no-verify"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {out}: not written: it would be 10")  # ~102 MB
    assert error.endswith("MB, over the 60 MB limit even in float16")
    assert list(tmp_path.iterdir()) == []


def test_runs_that_disagree_on_bands_are_refused_naming_them(runs, tmp_path, capsys):
    first = load_keras_model(runs[0])
    renamed = type(first).from_config({**first.get_config(), "band_names": ["B2", "B3", "B4"]})
    renamed.set_weights(first.get_weights())
    other = _save(renamed, tmp_path / "other")
    assert main([str(runs[0]), str(other), "-o", str(tmp_path / "model.pth")]) == 2
    error = capsys.readouterr().err
    assert "the runs disagree on band_names and cannot form one ensemble" in error
    assert f"{runs[0] / 'model.keras'}: ['B1', 'B2', 'B3']; {other / 'model.keras'}: ['B2', 'B3', 'B4']" in error
    assert not (tmp_path / "model.pth").exists()


def test_a_member_that_fails_parity_is_named(runs, tmp_path, monkeypatch, capsys):
    real_load_model = solution.load_model

    def second_member_flawed(path, device, **kwargs):
        ensemble = real_load_model(path, device, **kwargs)
        with torch.no_grad():
            ensemble.members[1].decoder.sep2.bn.running_mean += 0.5
        return ensemble

    monkeypatch.setattr(solution, "load_model", second_member_flawed)
    out = tmp_path / "model.pth"
    assert main([str(runs[0]), str(runs[1]), "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"differ from Keras (member {runs[1] / 'model.keras'})" in error
    assert list(tmp_path.iterdir()) == []


def test_an_ensemble_model_is_packed_as_its_members_with_the_ensembles_threshold(tmp_path, capsys):
    """A ``train --members`` run folder holds a GlacierEnsemble: model.pth gets its members, each with
    the threshold chosen for the ensemble, so solution.py thresholds the average where Keras does."""
    from keras_glacier.model import GlacierEnsemble

    nets = []
    for seed in (31, 32):
        net = build_deeplab(num_bands=3, band_names=BANDS, stats=STATS, encoder="resnet18", threshold=0.3)
        randomize_weights(net, seed=seed)
        nets.append(net)
    run = _save(GlacierEnsemble(nets, threshold=0.62), tmp_path / "members")
    out = tmp_path / "model.pth"
    assert main([str(run), "-o", str(out)]) == 0
    assert "an ensemble of 2 networks" in capsys.readouterr().out

    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier-ensemble/1"
    assert [m["config"]["threshold"] for m in content["members"]] == [0.62, 0.62]
    assert [m["config"]["encoder"] for m in content["members"]] == ["resnet18", "resnet18"]
    ensemble = solution.load_model(out, "cpu")
    assert ensemble.config["threshold"] == pytest.approx(0.62)
    keras_model = load_keras_model(run)
    batch = probe_batch(keras_model.members[0], (1, 64, 64), seed=4)
    expected = 1 / (1 + np.exp(-keras_logits(keras_model, batch)))  # the Keras ensemble's mean probability
    with torch.no_grad():
        mean = ensemble.probabilities(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(mean.transpose(0, 2, 3, 1), expected, atol=1e-4)
