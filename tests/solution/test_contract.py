"""The GlacierHack contract of solution.py: template main(), maskgeration(), outputs and bad input."""

import ast
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import solution
from solution import InputError, maskgeration, predict_probabilities
from tests.solution_fixtures import GEO_EXTRATAGS, make_test_model, save_weights, write_band_dataset

SOLUTION = Path(solution.__file__).resolve()

#: The organisers' main(), verbatim ("Do not update this section").
TEMPLATE_MAIN = '''def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="Path to test images folder")
    parser.add_argument("--masks", required=True, help="Path to masks folder (unused)")
    parser.add_argument("--out", required=True, help="Path to output predictions")
    args = parser.parse_args()

    # Build band → folder map
    imagepath = {}
    for band in os.listdir(args.data):
        band_path = os.path.join(args.data, band)
        if os.path.isdir(band_path):
            imagepath[band] = band_path

    print(f"Processing bands: {list(imagepath.keys())}")

    # Run mask generation and save predictions
    maskgeration(imagepath, args.out)'''

FAST = {"tta": False, "progress": False}


@pytest.fixture(scope="module")
def model():
    return make_test_model()


@pytest.fixture(scope="module")
def weights(model, module_tmp):
    return save_weights(model, module_tmp("weights") / "model.pth")


@pytest.fixture(scope="module")
def glacier_weights(model, module_tmp):
    """Weights that call every valid pixel glacier, so that only no-data can make background."""
    state = dict(model.state_dict())
    state["head.bias"] = state["head.bias"] + 50.0
    path = module_tmp("glacier") / "model.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    images = write_band_dataset(root)
    return root, images


def band_dict(root, shuffle_seed=0):
    names = [name for name in os.listdir(root) if (root / name).is_dir()]
    random.Random(shuffle_seed).shuffle(names)
    return {name: str(root / name) for name in names}


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


# --- the file itself ----------------------------------------------------------------------------


def test_parses_as_python_39_and_imports_only_the_listed_packages():
    source = SOLUTION.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))
    pip_lines = [line for line in source.splitlines()[:3] if line.startswith("# pip install ")]
    assert len(pip_lines) == 1
    assert set(pip_lines[0].split()[3:]) == {"torch", "numpy", "tifffile", "tqdm"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party == {"numpy", "tifffile", "torch", "tqdm"}


def test_template_main_is_verbatim():
    source = SOLUTION.read_text(encoding="utf-8")
    tree = ast.parse(source)
    mains = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert len(mains) == 1
    assert ast.get_source_segment(source, mains[0]) == TEMPLATE_MAIN
    assert "# Do not update this section\n" + TEMPLATE_MAIN in source
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and "__main__" in ast.unparse(guard.test)
    assert "main()" in ast.unparse(guard)


# --- the template's command line ----------------------------------------------------------------


def run_submission(tmp_path, weights, data_root, out):
    """Run `python solution.py` from a copy with model.pth beside it and an unrelated cwd."""
    submission = tmp_path / "submission"
    submission.mkdir(exist_ok=True)
    shutil.copy(SOLUTION, submission / "solution.py")
    if not (submission / "model.pth").exists():
        os.symlink(weights, submission / "model.pth")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, str(submission / "solution.py"), "--data", str(data_root), "--masks", "unused",
               "--out", str(out)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_template_main_writes_one_mask_per_tile(tmp_path, data, weights):
    root, images = data
    out = tmp_path / "predictions"
    result = run_submission(tmp_path, weights, root, out)
    assert result.returncode == 0, result.stderr
    assert "Processing bands:" in result.stdout
    assert sorted(os.listdir(out)) == ["B2_B2_masked_02_07.tif", "B2_B2_masked_03_01.tif"]
    in_process = maskgeration(band_dict(root), weights=weights, progress=False)
    for tile_id, image in images.items():
        with tifffile.TiffFile(out / f"B2_B2_masked_{tile_id}.tif") as tif:
            page = tif.pages[0]
            mask = page.asarray()
            assert len(tif.pages) == 1 and page.compression == 1 and page.samplesperpixel == 1
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, 255}
        assert (mask // 255 != in_process[tile_id]).mean() < 1e-3


def test_template_main_reports_bad_input_in_one_line(tmp_path, data, weights):
    root, _ = data
    shutil.rmtree(root / "Band3")
    result = run_submission(tmp_path, weights, root, tmp_path / "predictions")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"error: {root / 'Band3'}: missing band folder Band3 (found Band1, Band2, Band4, Band5)"
    assert not (tmp_path / "predictions").exists()


# --- maskgeration() -------------------------------------------------------------------------------


def test_pth_second_argument_loads_those_weights_and_writes_nothing(tmp_path, data, weights):
    root, images = data
    pth_dir = tmp_path / "platform"
    pth_dir.mkdir()
    pth = pth_dir / "model.pth"
    os.symlink(weights, pth)
    before = all_files(tmp_path)
    masks = maskgeration(band_dict(root, shuffle_seed=3), str(pth), progress=False)
    assert all_files(tmp_path) == before
    assert list(masks) == ["02_07", "03_01"]
    for tile_id, mask in masks.items():
        assert mask.dtype == np.uint8 and mask.shape == images[tile_id].shape[:2]
        assert set(np.unique(mask)) == {0, 1}


def test_masks_match_the_network_and_carry_band1_georeferencing(tmp_path, data, weights, model):
    root, images = data
    out = tmp_path / "out" / "nested"  # created on demand
    masks = maskgeration(root, out, weights=weights, **FAST)
    for tile_id, image in images.items():
        expected = (predict_probabilities(model, image, tta=False) > 0.5).astype(np.uint8)
        np.testing.assert_array_equal(masks[tile_id], expected)
        path = out / f"B2_B2_masked_{tile_id}.tif"
        np.testing.assert_array_equal(tifffile.imread(path), expected * 255)
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            for code, _, _, value, _ in GEO_EXTRATAGS:
                if code == 42113:
                    assert code not in tags  # the input's no-data value would mislabel background
                else:
                    assert tags[code].value == value
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temporary files left


def test_default_batch_on_cpu_is_one_image_per_pass_with_the_same_masks(tmp_path, data, weights, monkeypatch):
    root, images = data
    sizes = []
    real_forward = solution.torch_forward

    def counting_forward(model, device=None, amp=None):
        forward = real_forward(model, device, amp)

        def run(batch):
            sizes.append(len(batch))
            return forward(batch)

        return run

    monkeypatch.setattr(solution, "torch_forward", counting_forward)
    one_per_pass = maskgeration(band_dict(root), weights=weights, device="cpu", progress=False)
    assert sizes == [1] * 4 * len(images)  # every tile's four flipped views, one per pass
    sizes.clear()
    batched = maskgeration(band_dict(root), weights=weights, device="cpu", batch_size=8, progress=False)
    assert sizes == [8]
    for tile_id in images:
        assert (one_per_pass[tile_id] != batched[tile_id]).mean() < 1e-4


def test_shuffled_keys_and_band10_numbering_order_the_channels(tmp_path):
    root = tmp_path / "data"
    image = write_band_dataset(root, ids=("7",), size=(32, 48), channels=10, seed=4, geotags=False)["7"]
    model10 = make_test_model(in_channels=10, seed=2)
    weights10 = save_weights(model10, tmp_path / "model10.pth", half=True)
    imagepath = band_dict(root, shuffle_seed=1)
    assert list(imagepath) != sorted(imagepath, key=solution.band_number)
    mask = maskgeration(imagepath, None, weights=weights10, **FAST)["7"]
    loaded = solution.load_model(weights10, "cpu")
    numeric = predict_probabilities(loaded, image, tta=False) > 0.5
    lexicographic = [int(name[4:]) - 1 for name in sorted(imagepath)]  # Band1, Band10, Band2, ...
    wrong = predict_probabilities(loaded, image[..., lexicographic], tta=False) > 0.5
    np.testing.assert_array_equal(mask, numeric.astype(np.uint8))
    assert (mask != wrong).any()  # the test would notice a wrong channel order


def test_odd_sized_tiles_keep_their_shape(tmp_path, weights):
    root = tmp_path / "data"
    images = write_band_dataset(root, ids=("01",), size=(300, 517), geotags=False)
    images.update(write_band_dataset(root, ids=("02",), size=(9, 13), seed=5, geotags=False))
    out = tmp_path / "out"
    masks = maskgeration(band_dict(root), out, weights=weights, **FAST)
    for tile_id, image in images.items():
        assert masks[tile_id].shape == image.shape[:2]
        assert tifffile.imread(out / f"B2_B2_masked_{tile_id}.tif").shape == image.shape[:2]


def test_nodata_pixels_are_background(tmp_path, glacier_weights):
    root = tmp_path / "data"
    write_band_dataset(root, ids=("02_07",), geotags=False)
    band3 = root / "Band3" / "B4_B4_masked_02_07.tif"
    values = tifffile.imread(band3)
    values[10:20, 30:40] = np.nan
    tifffile.imwrite(band3, values)
    for band in range(1, 6):
        path = next((root / f"Band{band}").iterdir())
        values = tifffile.imread(path)
        values[40:50, 0:5] = 0.0
        tifffile.imwrite(path, values)
    mask = maskgeration(root, tmp_path / "out", weights=glacier_weights, progress=False)["02_07"]
    expected = np.ones((64, 64), np.uint8)
    expected[10:20, 30:40] = 0
    expected[40:50, 0:5] = 0
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "B2_B2_masked_02_07.tif"), expected * 255)


# --- bad input -------------------------------------------------------------------------------------


def break_missing_band_folder(root, weights):
    shutil.rmtree(root / "Band2")
    return weights, root / "Band2"


def break_missing_tile(root, weights):
    os.remove(root / "Band5" / "B10_B10_masked_03_01.tif")
    return weights, root / "Band5"


def break_mismatched_size(root, weights):
    path = root / "Band4" / "B6_B6_masked_03_01.tif"
    tifffile.imwrite(path, np.ones((64, 60), np.float32))
    return weights, path


def break_unreadable_tiff(root, weights):
    path = root / "Band2" / "B3_B3_masked_03_01.tif"
    path.write_bytes(b"this is not a TIFF")
    return weights, path


def break_nan_only_band(root, weights):
    path = root / "Band4" / "B6_B6_masked_03_01.tif"
    tifffile.imwrite(path, np.full((64, 64), np.nan, np.float32))
    return weights, path


def break_missing_weights(root, weights):
    missing = root.parent / "no" / "model.pth"
    return missing, missing


def break_incompatible_weights(root, weights):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["aspp.b1.conv.weight"] = state["aspp.b1.conv.weight"][:128]
    path = root.parent / "incompatible.pth"
    torch.save(state, path)
    return path, path


def break_band_count(root, weights):
    shutil.rmtree(root / "Band5")
    return weights, weights


@pytest.mark.parametrize(
    "breakage",
    [break_missing_band_folder, break_missing_tile, break_mismatched_size, break_unreadable_tiff,
     break_nan_only_band, break_missing_weights, break_incompatible_weights, break_band_count],
)
def test_bad_input_raises_input_error_naming_the_file(tmp_path, data, weights, breakage):
    root, _ = data
    model_path, culprit = breakage(root, weights)
    with pytest.raises(InputError) as info:
        maskgeration(band_dict(root), tmp_path / "out", weights=model_path, **FAST)
    message = str(info.value)
    assert message.startswith(str(culprit) + ":"), message
    assert "\n" not in message
    if breakage is break_incompatible_weights:
        assert "aspp.b1.conv.weight expected (256, 512, 3, 3) got (128, 512, 3, 3)" in message
    if breakage is break_band_count:
        assert "takes 5 bands" in message
    out = tmp_path / "out"
    assert not out.exists() or not [name for name in os.listdir(out) if name.startswith(".")]


def test_output_folder_that_is_a_file_or_an_input_folder(tmp_path, data, weights):
    root, _ = data
    (tmp_path / "out").write_text("")
    with pytest.raises(InputError, match=r"out: output folder is a file"):
        maskgeration(root, tmp_path / "out", weights=weights, **FAST)
    before = (root / "Band1" / "B2_B2_masked_02_07.tif").read_bytes()
    with pytest.raises(InputError, match=r"Band1: output folder is the input band folder Band1"):
        maskgeration(root, root / "Band1", weights=weights, **FAST)
    assert (root / "Band1" / "B2_B2_masked_02_07.tif").read_bytes() == before
    # Another folder of the dataset (its labels, as the template's main() passes every folder): refused,
    # since a mask beside a label of the same tile breaks the dataset for every later reading.
    labels = root / "label"
    labels.mkdir()
    tifffile.imwrite(labels / "Y_output_resized_02_07.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(InputError, match=r"label: output folder already holds 'Y_output_resized_02_07.tif' of tile "
                                         r"'02_07' \(a label or band folder\?\)"):
        maskgeration(band_dict(root), labels, weights=weights, **FAST)
    assert os.listdir(labels) == ["Y_output_resized_02_07.tif"]
    # Masks of an earlier run, under their own names, are replaced as before.
    out = tmp_path / "masks"
    maskgeration(root, out, weights=weights, **FAST)
    maskgeration(root, out, weights=weights, **FAST)
    assert sorted(os.listdir(out)) == sorted(os.listdir(root / "Band1"))


# --- atomic writes -------------------------------------------------------------------------------------


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "mask.tif"
    real_imwrite = tifffile.imwrite

    def crash_midway(handle, data, **kwargs):
        handle.write(b"II*\x00" + bytes(100))
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        solution.write_mask_tiff(target, np.ones((8, 8), np.uint8))
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(tifffile, "imwrite", real_imwrite)
    solution.write_mask_tiff(target, np.eye(8, dtype=np.uint8))
    monkeypatch.setattr(tifffile, "imwrite", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        solution.write_mask_tiff(target, np.zeros((8, 8), np.uint8))
    assert os.listdir(tmp_path) == ["mask.tif"]
    np.testing.assert_array_equal(tifffile.imread(target), np.eye(8, dtype=np.uint8) * 255)


def test_crash_during_maskgeration_keeps_finished_masks_whole(tmp_path, data, weights, monkeypatch):
    root, _ = data
    real_imwrite = tifffile.imwrite
    calls = []

    def crash_on_second(handle, data, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"II*\x00" + bytes(64))
            raise KeyboardInterrupt
        return real_imwrite(handle, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", crash_on_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        maskgeration(root, out, weights=weights, **FAST)
    assert os.listdir(out) == ["B2_B2_masked_02_07.tif"]
    assert tifffile.imread(out / "B2_B2_masked_02_07.tif").shape == (64, 64)


def test_unusual_georeferencing_tags_do_not_cost_the_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(solution, "geotiff_tags", lambda path: [(33550, 12, 3, "not numbers", True)])
    target = tmp_path / "mask.tif"
    with pytest.warns(UserWarning, match=r"mask.tif: georeferencing tags not copied"):
        solution.write_mask_tiff(target, np.eye(4, dtype=np.uint8), tmp_path / "reference.tif")
    assert os.listdir(tmp_path) == ["mask.tif"]
    np.testing.assert_array_equal(tifffile.imread(target), np.eye(4, dtype=np.uint8) * 255)


def test_platform_pth_path_without_a_file_falls_back_to_the_default_weights(tmp_path, data, weights, monkeypatch):
    root, _ = data
    platform_pth = tmp_path / "nowhere" / "model.pth"
    monkeypatch.setattr(solution, "DEFAULT_WEIGHTS", Path(weights))
    masks = maskgeration(root, str(platform_pth), **FAST)
    assert list(masks) == ["02_07", "03_01"]
    assert not (tmp_path / "nowhere").exists()
    monkeypatch.setattr(solution, "DEFAULT_WEIGHTS", tmp_path / "absent" / "model.pth")
    with pytest.raises(InputError, match=r"nowhere.model.pth: model weights not found"):
        maskgeration(root, str(platform_pth), **FAST)
