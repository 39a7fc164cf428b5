"""``python -m convert`` and ``convert_model`` end to end on a saved .keras model.

The model has 3 bands and CBAM reduction 8 (not the defaults), so the PyTorch twin's configuration
really is read off the Keras model.
"""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import convert.export
import solution
from convert.__main__ import build_parser, main
from convert.export import convert_model, keras_logits, load_keras_model, probe_batch, torch_logits
from convert.name_map import keras_to_torch_state_dict, torch_to_keras
from convert.parity import randomize_weights
from keras_glacier.model import build_deeplab

REPO = Path(__file__).resolve().parents[2]
STATS = {"lo": [0.0, 10.0, 20.0], "hi": [100.0, 200.0, 400.0], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
NUM_PARAMETERS = 25.6e6  # README, "Architecture": ~25.6M (3 bands, reduction 8 changes it by well under 1%)


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    folder = module_tmp("run")
    model = build_deeplab(num_bands=3, stats=STATS, reduction=8)
    randomize_weights(model, seed=4)
    with warnings.catch_warnings():
        # Keras' saver converts its Variables with np.array(variable), which numpy 2 flags as deprecated
        # (Keras' __array__ lacks the copy keyword): a Keras issue, not this project's.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def saved_keras_model(run_dir):
    return load_keras_model(run_dir)


def _one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    return lines[0]


def _file_state(path: Path) -> dict:
    """The state dict of a written model.pth, after checking its format and its configuration."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(content) == ["config", "format", "state_dict"] and content["format"] == "keras-glacier/1"
    assert content["config"]["num_bands"] == 3 and content["config"]["task"] == "binary"
    assert content["config"]["reduction"] == 8 and content["config"]["threshold"] == 0.5
    state = content["state_dict"]
    assert type(state) is dict and all(type(value) is torch.Tensor for value in state.values())
    return state


def test_cli_writes_a_verified_float32_state_dict(run_dir, saved_keras_model, tmp_path, capsys):
    out = tmp_path / "model.pth"
    assert main([str(run_dir), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    size = out.stat().st_size
    assert f"{size} bytes, float32" in printed
    assert "verified against Keras on 2x64x64: max |logit diff| = " in printed
    assert "mask agreement 100.000%" in printed
    assert 3.9 * NUM_PARAMETERS < size < 4.2 * NUM_PARAMETERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary left behind

    state = _file_state(out)
    assert {value.dtype for value in state.values()} == {torch.float32, torch.int64}
    assert state["normalize.lo"].tolist() == STATS["lo"]
    assert state["aspp.b0.cbam.ca.fc1.weight"].shape == (32, 256)  # reduction 8

    # Independently of the CLI's own check: the shipped loader reproduces the Keras logits.
    module = solution.load_model(out, "cpu")
    batch = probe_batch(saved_keras_model, (1, 64, 96), seed=21)
    diff = np.abs(keras_logits(saved_keras_model, batch) - torch_logits(module, batch)).max()
    assert diff <= 1e-4


def test_cli_half_writes_float16_next_to_the_keras_file(run_dir, capsys):
    out = run_dir / "model.pth"  # the default output
    assert main([str(run_dir / "model.keras"), "--half"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (" in printed and "float16" in printed
    assert "mask agreement" in printed
    size = out.stat().st_size
    assert 1.9 * NUM_PARAMETERS < size < 2.2 * NUM_PARAMETERS

    state = _file_state(out)
    assert {value.dtype for value in state.values()} == {torch.float16, torch.int64}
    module = solution.load_model(out, "cpu")
    assert {parameter.dtype for parameter in module.state_dict().values()} == {torch.float32, torch.int64}
    np.testing.assert_array_equal(module.normalize.hi.numpy(), np.float16(STATS["hi"]).astype(np.float32))
    out.unlink()


def test_refuses_a_module_with_other_shapes_and_keeps_the_old_file(run_dir, tmp_path, monkeypatch, capsys):
    class WrongHead(solution.AttentionDeepLabV3Plus):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.head = torch.nn.Conv2d(256, 2, 1)

    monkeypatch.setattr(solution, "AttentionDeepLabV3Plus", WrongHead)
    out = tmp_path / "model.pth"
    out.write_bytes(b"previous weights")
    assert main([str(run_dir), "-o", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "head.weight: expected (2, 256, 1, 1), got (1, 256, 1, 1)" in line
    assert "head.bias: expected (2,), got (1,)" in line
    assert out.read_bytes() == b"previous weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_failed_verification_leaves_no_file(run_dir, tmp_path, monkeypatch, capsys):
    real_load_model = solution.load_model

    def load_with_a_flaw(path, device, **kwargs):
        module = real_load_model(path, device, **kwargs)
        with torch.no_grad():
            module.decoder.sep2.bn.running_mean += 0.5
        return module

    monkeypatch.setattr(solution, "load_model", load_with_a_flaw)
    out = tmp_path / "model.pth"
    assert main([str(run_dir), "-o", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{out}: not written: the PyTorch model's logits differ from Keras by up to" in line
    assert list(tmp_path.iterdir()) == []


def test_refuses_files_over_the_size_limit(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert.export, "MAX_BYTES", 10_000_000)
    out = tmp_path / "model.pth"
    assert main([str(run_dir), "-o", str(out), "--no-verify"]) == 1
    assert "over the 10 MB limit" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_non_default_aspp_rates_travel_inside_model_pth(tmp_path):
    model = build_deeplab(num_bands=3, stats=STATS, aspp_rates=(3, 6, 9))
    randomize_weights(model, seed=5)
    out = tmp_path / "rates.pth"
    report = convert_model(model, out)
    assert report.path == out and report.size_bytes == out.stat().st_size
    assert report.aspp_rates == (3, 6, 9) and report.in_channels == 3 and report.reduction == 16
    assert report.max_abs_diff <= report.tolerance and report.tolerance >= 1e-4
    assert report.mask_agreement == 1.0
    assert report.num_parameters == sum(
        p.numel() for p in solution.AttentionDeepLabV3Plus(3, (3, 6, 9)).parameters()
    )
    loaded = solution.load_model(out, "cpu")  # no aspp_rates argument: the file says which
    assert [m.dilation[0] for m in (loaded.aspp.b1.conv, loaded.aspp.b2.conv, loaded.aspp.b3.conv)] == [3, 6, 9]
    assert loaded.aspp.rates.tolist() == [3, 6, 9]


def test_mixed_precision_model_is_verified_through_its_float32_equivalent(saved_keras_model, tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_deeplab(num_bands=3, stats=STATS, reduction=8)
    finally:
        keras.config.set_dtype_policy("float32")
    torch_to_keras(keras_to_torch_state_dict(saved_keras_model), model)  # trained-like weights
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        report = convert_model(model, tmp_path / "mixed.pth")
        assert keras.config.dtype_policy().name == "mixed_bfloat16"  # the caller's policy is restored
    finally:
        keras.config.set_dtype_policy("float32")
    assert report.max_abs_diff <= 1e-4
    assert any("computes in mixed_bfloat16" in note for note in report.notes)


def test_missing_path_is_a_one_line_error_from_the_real_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "model.pth")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    expected = f"error: {tmp_path / 'nowhere'}: model not found (give a run folder or a .keras file)"
    assert _one_error_line(result.stderr) == expected
    assert result.stdout == ""


def _zip_without_model(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "no config.json, no weights")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "no model.keras in this run folder"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not a .keras model file"),
        (lambda d: (d / "broken.keras").write_text("x") and d / "broken.keras",
         "broken.keras: not a .keras archive (not a zip file"),
        (lambda d: _zip_without_model(d / "empty.keras"), "cannot load as a Keras model"),
    ],
    ids=["empty-folder", "not-keras", "corrupt-keras", "zip-without-a-model"],
)
def test_user_mistakes_exit_2(tmp_path, capsys, make, message):
    source = make(tmp_path)
    assert main([str(source), "-o", str(tmp_path / "model.pth")]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "model.pth").exists()


def test_output_folder_must_exist(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "-o", str(tmp_path / "absent" / "model.pth")]) == 2
    assert "output folder does not exist" in _one_error_line(capsys.readouterr().err)


def test_an_output_that_is_a_keras_model_or_under_a_file_is_refused_before_anything_is_written(run_dir, tmp_path,
                                                                                              capsys):
    keras_file = run_dir / "model.keras"
    before = keras_file.read_bytes()
    assert main([str(run_dir), "-o", str(keras_file)]) == 2
    assert "give a .pth name" in _one_error_line(capsys.readouterr().err)
    assert keras_file.read_bytes() == before
    (tmp_path / "afile").write_text("x")
    assert main([str(run_dir), "-o", str(tmp_path / "afile" / "model.pth")]) == 2
    assert f"{tmp_path / 'afile'}: is a file, not a folder" in _one_error_line(capsys.readouterr().err)


def test_every_flag_has_help():
    parser = build_parser()
    assert all(action.help for action in parser._actions)
    assert {"--out", "--half", "--no-verify"} <= {opt for action in parser._actions for opt in action.option_strings}


def test_the_float32_tolerance_grows_with_the_logits_it_checks():
    from convert.export import tolerance_for

    assert tolerance_for(np.array([[-0.3], [0.8]]), half=False) == 1e-4
    assert tolerance_for(np.array([[-40.0], [8.0]]), half=False) == pytest.approx(4e-3)
    assert tolerance_for(np.array([[-40.0], [8.0]]), half=True) == pytest.approx(0.4)
