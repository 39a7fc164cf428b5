"""``python -m keras_glacier.predict`` and the Keras forward it hands to ``solution.predict_tiles``.

The model is the real network with random, non-trivial weights whose head is shifted so that about
half of the demo pixels come out as glacier (a constant prediction would hide flips and no-data bugs).
"""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import contextlib
import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import tifffile

import solution
from convert.export import convert_model
from convert.parity import randomize_weights
from keras_glacier import inference, predict
from keras_glacier.data import discover, read_sample
from keras_glacier.data.sources import NPY
from keras_glacier.model import build_deeplab

#: ModelPixelScaleTag written on the Band1 inputs; the masks must carry it.
PIXEL_SCALE = (30.0, 30.0, 0.0)
GEO_EXTRATAGS = [(33550, "d", 3, PIXEL_SCALE, True)]


def make_run(folder, stats, images, seed=0):
    """A run folder (model.keras, stats.json, config.json) with a random model calibrated on ``images``."""
    model = build_deeplab(5, stats=stats)
    randomize_weights(model, seed=seed)
    probabilities = inference.keras_forward(model)(np.stack(images))
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    head = model.get_layer("head")
    head.bias.assign(head.bias - np.float32(np.median(np.log(p / (1 - p)))))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "stats.json").write_text(json.dumps(stats))
    (folder / "config.json").write_text(json.dumps({"bands": None}))
    return folder, model


def run_cli(main, argv):
    """(exit status, stdout, stderr) of an in-process CLI call (keeps the compiled model cache warm)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(arg) for arg in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(module_tmp, demo_stats, demo_tiff_source):
    images = [read_sample(sample, (0, 1, 2, 3, 4))[0] for sample in demo_tiff_source.samples]
    return make_run(module_tmp("run") / "run", demo_stats.to_dict(), images)


@pytest.fixture(scope="module")
def geo_root(module_tmp, demo_tiff_root):
    """The demo band folders with georeferenced Band1 files and explicit no-data pixels.

    Tile 0: Band2 NaN in rows 0-7, cols 0-7 (one non-finite band). Tile 1: every band 0 in rows
    10-13 (all bands exactly zero). Both are no-data and must come out as background.
    """
    root = module_tmp("geo") / "data"
    shutil.copytree(demo_tiff_root, root)
    for path in sorted((root / "Band1").iterdir()):
        tifffile.imwrite(path, tifffile.imread(path), extratags=GEO_EXTRATAGS)
    samples = discover(root).samples
    band2 = samples[0].image_paths[1]
    data = tifffile.imread(band2)
    data[0:8, 0:8] = np.nan
    tifffile.imwrite(band2, data)
    for path in samples[1].image_paths:
        data = tifffile.imread(path)
        data[10:14] = 0.0
        tifffile.imwrite(path, data, extratags=GEO_EXTRATAGS if "Band1" in path else ())
    return root


@pytest.fixture(scope="module")
def predicted(run, geo_root, module_tmp):
    out = module_tmp("predicted") / "masks"
    status, stdout, stderr = run_cli(predict.main, [run[0], "--data", geo_root, "--out", out, "--probabilities"])
    assert status == 0, stderr
    return out, stdout


def test_band_folder_masks_follow_the_submission_contract(predicted, geo_root):
    out, stdout = predicted
    samples = discover(geo_root).samples
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(s.name for s in samples)
    assert stdout.count("\n") == 1 and stdout.startswith(f"predicted {len(samples)} tiles in ")
    masks = []
    for sample in samples:
        with tifffile.TiffFile(out / sample.name) as tif:
            page = tif.pages[0]
            mask = page.asarray()
            assert page.compression == tifffile.COMPRESSION.NONE
            assert page.tags[33550].value == PIXEL_SCALE
            assert 42113 not in page.tags
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        probability = tifffile.imread(out / "probabilities" / sample.name)
        assert probability.dtype == np.float32 and probability.shape == (64, 64)
        assert np.array_equal(mask == 255, probability > 0.5)
        masks.append(mask)
    fraction = np.mean(np.stack(masks) == 255)
    assert 0.05 < fraction < 0.95, fraction
    assert not list(out.glob(".*")), "temporary files left behind"


def test_nodata_pixels_are_background(predicted, geo_root):
    out, _ = predicted
    samples = discover(geo_root).samples
    assert (tifffile.imread(out / samples[0].name)[0:8, 0:8] == 0).all()
    assert (tifffile.imread(out / samples[1].name)[10:14] == 0).all()
    assert (tifffile.imread(out / "probabilities" / samples[1].name)[10:14] == 0).all()


def test_keras_masks_equal_the_pytorch_submission(predicted, run, geo_root, tmp_path):
    """Same weights on both sides (converted .pth): solution.maskgeration writes the same masks."""
    out, _ = predicted
    weights = tmp_path / "model.pth"
    convert_model(run[0] / "model.keras", weights, verify=False)
    torch_out = tmp_path / "torch_masks"
    masks = solution.maskgeration(str(geo_root), str(torch_out), weights=str(weights), device="cpu", progress=False)
    torch_model = solution.load_model(str(weights), "cpu")
    for sample in discover(geo_root).samples:
        keras_mask = tifffile.imread(out / sample.name)
        torch_mask = tifffile.imread(torch_out / sample.name)
        keras_probability = tifffile.imread(out / "probabilities" / sample.name)
        assert np.array_equal(masks[sample.sample_id] * 255, torch_mask)
        image = read_sample(sample, (0, 1, 2, 3, 4))[0]
        torch_probability = solution.predict_probabilities(torch_model, image, device="cpu")
        assert np.abs(torch_probability - keras_probability).max() < 1e-4
        # A mask may only differ where the probability is within rounding of the threshold.
        differ = keras_mask != torch_mask
        assert (np.abs(keras_probability[differ] - 0.5) < 1e-4).all()


def test_tta_is_the_mean_of_the_four_flipped_predictions(run, demo_tiff_source):
    forward = inference.keras_forward(run[1])
    image = read_sample(demo_tiff_source.samples[2], (0, 1, 2, 3, 4))[0]
    image[5:9] = np.nan  # no-data rows: 0 in every view, so 0 in the mean
    tta = inference.predict_probabilities(forward, [image], tta=True)[0]
    views = []
    for axes in ((), (0,), (1,), (0, 1)):
        flipped = np.flip(image, axis=axes) if axes else image
        probability = inference.predict_probabilities(forward, [flipped], tta=False)[0]
        views.append(np.flip(probability, axis=axes) if axes else probability)
    assert np.abs(tta - np.mean(views, axis=0)).max() < 1e-5
    assert np.abs(views[0] - views[1]).max() > 1e-3, "flips must matter for this check to mean anything"
    assert (tta[5:9] == 0).all()


def test_keras_forward_pads_small_batches_and_follows_weight_changes(run, demo_tiff_source):
    model = run[1]
    batch = np.stack([read_sample(s, (0, 1, 2, 3, 4))[0] for s in demo_tiff_source.samples[:3]])
    forward = inference.keras_forward(model)
    full = forward(batch)
    assert full.shape == (3, 64, 64) and full.dtype == np.float32
    single = forward(batch[1:2])  # zero-padded to the 3-tile batch already compiled
    assert single.shape == (1, 64, 64)
    assert np.abs(single[0] - full[1]).max() < 1e-6
    head = model.get_layer("head")
    original = head.bias.numpy()
    try:
        head.bias.assign(original + 1.0)  # every logit + 1
        shifted = forward(batch)
    finally:
        head.bias.assign(original)
    logits = np.log(full.astype(np.float64)) - np.log1p(-full.astype(np.float64))
    nodata = np.stack([solution.nodata_mask(image) for image in batch])
    assert np.abs(shifted - 1.0 / (1.0 + np.exp(-(logits + 1.0))))[~nodata].max() < 1e-4


def test_npy_slices_get_stem_named_masks(run, demo_npy_root, tmp_path):
    data = tmp_path / "slices"
    data.mkdir()
    for name in ("slice_0_img_000.npy", "slice_0_mask_000.npy", "slice_1_img_002.npy", "slice_1_mask_002.npy"):
        shutil.copy(demo_npy_root / name, data / name)
    out = tmp_path / "masks"
    status, stdout, stderr = run_cli(predict.main, [run[0] / "model.keras", "--data", data, "--out", out, "--no-tta"])
    assert status == 0, stderr
    assert "predicted 2 tiles" in stdout and "TTA off" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["slice_0_img_000.tif", "slice_1_img_002.tif"]
    for path in out.iterdir():
        mask = tifffile.imread(path)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}


def test_bands_come_from_the_run_for_slices_only(demo_npy_source, demo_tiff_source):
    config = {"bands": [0, 1, 2, 3, 4]}
    assert demo_npy_source.kind == NPY
    assert inference.choose_bands(demo_npy_source, None, {}) == (0, 1, 2, 4, 5)  # the competition preset
    assert inference.choose_bands(demo_npy_source, None, config) == (0, 1, 2, 3, 4)
    # A run's config.json names a spec; the channels it read (run.json) win.
    assert inference.choose_bands(demo_npy_source, None, {"bands": "seed"}) == (1, 2, 3, 5, 9)
    assert inference.choose_bands(demo_npy_source, None, {"bands": "seed", "bands_used": [0, 1, 2, 4, 5]}) == (
        0, 1, 2, 4, 5)
    assert inference.choose_bands(demo_npy_source, (4, 5, 6, 7, 8), config) == (4, 5, 6, 7, 8)
    assert inference.choose_bands(demo_tiff_source, None, {"bands": [1, 2, 3, 5, 9]}) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_data", "dataset folder not found"),
        ("missing_model", "model not found"),
        ("not_keras", "not a .keras model file"),
        ("bad_window", "--window 100"),
        ("out_is_band1", "output folder is an input folder"),
        ("out_is_label", "output folder already holds 'Y_output_resized_"),
        ("band_count", "the model takes 5 bands but"),
    ],
)
def test_bad_input_is_one_error_line(case, expected, run, geo_root, demo_npy_root, tmp_path):
    model, data, out, extra = run[0], geo_root, tmp_path / "out", []
    if case == "missing_data":
        data = tmp_path / "nowhere"
    elif case == "missing_model":
        model = tmp_path / "nothing.keras"
    elif case == "not_keras":
        model = tmp_path / "weights.pth"
        model.write_bytes(b"not a model")
    elif case == "bad_window":
        extra = ["--window", "100"]
    elif case == "out_is_band1":
        out = geo_root / "Band1"
    elif case == "out_is_label":
        out = geo_root / "label"
    elif case == "band_count":
        data, extra = demo_npy_root, ["--bands", "1,2,3"]
    before = sorted(p.name for p in (geo_root / "Band1").iterdir())
    labels = sorted(p.name for p in (geo_root / "label").iterdir())
    status, stdout, stderr = run_cli(predict.main, [model, "--data", data, "--out", out, *extra])
    assert status == 2
    assert stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert expected in stderr
    assert sorted(p.name for p in (geo_root / "Band1").iterdir()) == before
    assert sorted(p.name for p in (geo_root / "label").iterdir()) == labels


def test_threshold_comes_from_the_run_and_the_flag_overrides_it(run, geo_root, tmp_path):
    """A model whose threshold is 0.7 (chosen in training, saved with it) writes prob > 0.7; --threshold wins."""
    import keras

    from keras_glacier.fileio import save_keras_model

    folder = tmp_path / "run07"
    shutil.copytree(run[0], folder)
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    model.threshold = 0.7
    save_keras_model(model, folder / "model.keras")
    (folder / "run.json").write_text(json.dumps({"threshold": 0.4}))  # the model's own value wins over the run's
    assert inference.load_run(folder).settings["threshold"] == 0.7
    out, flag_out = tmp_path / "m07", tmp_path / "m03"
    assert run_cli(predict.main, [folder, "--data", geo_root, "--out", out, "--probabilities"])[0] == 0
    assert run_cli(predict.main, [folder, "--data", geo_root, "--out", flag_out, "--threshold", "0.3"])[0] == 0
    differs = False
    for sample in discover(geo_root).samples:
        probability = tifffile.imread(out / "probabilities" / sample.name)
        mask = tifffile.imread(out / sample.name)
        np.testing.assert_array_equal(mask, np.where(probability > 0.7, 255, 0))
        np.testing.assert_array_equal(tifffile.imread(flag_out / sample.name), np.where(probability > 0.3, 255, 0))
        differs |= bool(((probability > 0.5) != (probability > 0.7)).any())
    assert differs, "some probabilities must lie between 0.5 and 0.7 for this check to mean anything"
    # The converter carries the run's threshold into model.pth, where solution.py reads it.
    weights = convert_model(folder / "model.keras", tmp_path / "model.pth", verify=False).path
    assert solution.load_model(weights, "cpu").config["threshold"] == 0.7


def test_band_names_that_differ_from_the_models_are_a_warning(run, geo_root, tmp_path):
    from types import SimpleNamespace

    import keras

    from keras_glacier.fileio import save_keras_model

    def named_model(names):
        """A model with ``names`` in its configuration (the model's own names win over its run's)."""
        model = keras_glacier.GlacierDeepLab.from_config({**run[1].get_config(), "num_bands": len(names),
                                                          "band_names": list(names), "stats": None})
        return model

    loaded = inference.LoadedModel(named_model(["B1", "B2", "B3"]), None, {})
    same = SimpleNamespace(band_names=("B1", "B2", "B3", "B4"))
    other = SimpleNamespace(band_names=("B4", "B5", "B7"))
    generic = SimpleNamespace(band_names=("Band1", "Band2", "Band3"))
    assert inference.band_names_warning(loaded, same, (0, 1, 2)) is None
    assert inference.band_names_warning(loaded, generic, (0, 1, 2)) is None
    message = inference.band_names_warning(loaded, other, (0, 1, 2))
    assert message and "predictions may be wrong" in message
    # End to end: a run that names other bands than the data's still predicts, with one warning line.
    folder = tmp_path / "named"
    shutil.copytree(run[0], folder)
    model = named_model(["B4", "B5", "B7", "B8", "B9"])
    model.set_weights(keras.saving.load_model(folder / "model.keras", compile=False).get_weights())
    save_keras_model(model, folder / "model.keras")
    source = discover(geo_root)
    named = replace(source, band_names=("B1", "B2", "B3", "B5", "B6_VCID1"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict, "discover", lambda data: named)
        status, _, err = run_cli(predict.main, [folder, "--data", geo_root, "--out", tmp_path / "out"])
    assert status == 0
    warnings_shown = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings_shown) == 1 and "predictions may be wrong" in warnings_shown[0]
    assert len(list((tmp_path / "out").glob("*.tif"))) == len(source.samples)


def test_multiclass_masks_are_phase2_values_of_the_argmax(geo_root, demo_stats, tmp_path):
    """NEEDS THE MODEL BRANCH (multi-class build_deeplab): fails, never skips, before it is merged."""
    try:
        model = build_deeplab(5, stats=demo_stats.to_dict(), task="multiclass",
                              class_names=["background", "clean_ice", "debris"])
    except TypeError as exc:
        pytest.fail(f"needs the model branch (multi-class build_deeplab): {exc}")
    randomize_weights(model, seed=3)
    out = tmp_path / "out"
    summary = predict.predict_folder(model, geo_root, out, probabilities=True, progress=False)
    assert summary.num_tiles == len(discover(geo_root).samples)
    for sample in discover(geo_root).samples:
        probability = tifffile.imread(out / "probabilities" / sample.name)
        assert probability.shape[0] == 3  # one plane per class
        expected = np.array([0, 85, 170], np.uint8)[np.argmax(probability, axis=0)]
        np.testing.assert_array_equal(tifffile.imread(out / sample.name), expected)


def test_tiling_flags_mean_the_same_in_every_command_that_predicts():
    """predict (tiles), predict --scene and evaluate --model share one definition of the window flags."""
    from keras_glacier.evaluate import cli as evaluate_cli
    from keras_glacier.scenes import cli as scene_cli

    tiles = predict.build_parser().parse_args(["m", "--data", "d", "--out", "o"])
    scene = scene_cli.build_parser().parse_args(["m", "--scene", "s", "--out", "o"])
    scored = evaluate_cli.build_parser().parse_args(["--labels-from", "l", "--out", "o"])
    expected = (solution.DEFAULT_WINDOW, solution.DEFAULT_OVERLAP, solution.DEFAULT_BATCH_SIZE)
    for args in (tiles, scene, scored):
        assert (args.window, args.overlap, args.batch_size) == expected
    assert tiles.no_tta is False and scene.no_tta is False and not hasattr(scored, "no_tta")
    window = predict.build_parser().parse_args(["m", "--data", "d", "--out", "o", "--window", "96", "--no-tta"])
    assert window.window == 96 and window.no_tta
