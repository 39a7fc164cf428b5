"""``evaluate`` on multi-class masks: per-class scores, the confusion matrix, the class encodings."""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import csv
import json

import numpy as np
import pytest
import tifffile
from sklearn.metrics import f1_score, jaccard_score, matthews_corrcoef

from keras_glacier import evaluate
from keras_glacier.evaluate import ClassSet, classes_from_config
from tests.test_predict import run_cli

NAMES = ["background", "glacier", "debris", "lake"]
VALUES = np.array([0, 85, 170, 255], np.uint8)


def class_tiles():
    """Two 8x8 tiles of class indices: "a" with all four classes and some errors, "b" predicted exactly."""
    truth = {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)}
    truth["a"][:4, :4] = 1
    truth["a"][4:, :3] = 2
    truth["a"][:2, 6:] = 3
    pred = {name: array.copy() for name, array in truth.items()}
    pred["a"][3, :4] = 2  # 4 glacier pixels called debris
    pred["a"][7, 5:] = 3  # 3 background pixels called lake
    pred["a"][4, 0] = 0  # 1 debris pixel missed
    truth["b"][2:6, 2:6] = 1
    pred["b"][2:6, 2:6] = 1
    return truth, pred


@pytest.fixture
def multiclass_folders(tmp_path):
    """Band1..Band3 + label/ with phase-2 values, tile 02 with a no-data pixel; masks as predict names them."""
    truth, pred = class_tiles()
    root, masks = tmp_path / "data", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for folder in ("Band1", "Band2", "Band3", "label"):
        (root / folder).mkdir(parents=True)
    masks.mkdir()
    for tile_id, name in (("01", "a"), ("02", "b")):
        for band in (1, 2, 3):
            data = rng.uniform(100, 200, (8, 8)).astype(np.float32)
            if name == "b" and band == 2:
                data[0, 0] = np.nan  # no-data: ignored although truth and prediction disagree there
            tifffile.imwrite(root / f"Band{band}" / f"B{band}_{tile_id}.tif", data)
        tifffile.imwrite(root / "label" / f"Y_{tile_id}.tif", VALUES[truth[name]])
        predicted = pred[name].copy()
        if name == "b":
            predicted[0, 0] = 3
        tifffile.imwrite(masks / f"B1_{tile_id}.tif", VALUES[predicted])
    return root, masks


def test_api_equals_sklearn_and_per_tile_conventions():
    truth, pred = class_tiles()
    report = evaluate.evaluate_multiclass_predictions([truth["a"], truth["b"]], [pred["a"], pred["b"]], NAMES,
                                                      names=["a", "b"])
    y = np.concatenate([truth["a"].ravel(), truth["b"].ravel()])
    p = np.concatenate([pred["a"].ravel(), pred["b"].ravel()])
    pooled = report["pooled"]
    assert pooled["mcc"] == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    iou = jaccard_score(y, p, average=None, labels=range(4))
    f1 = f1_score(y, p, average=None, labels=range(4))
    for index, name in enumerate(NAMES):
        assert pooled["per_class"][name]["iou"] == pytest.approx(iou[index], abs=1e-12)
        assert pooled["per_class"][name]["f1"] == pytest.approx(f1[index], abs=1e-12)
    assert pooled["mean_iou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert report["confusion_matrix"][1] == [0, 12 + 16, 4, 0] and report["confusion_matrix"][2][0] == 1
    a, b = report["tiles"]
    assert a["mcc"] == pytest.approx(matthews_corrcoef(truth["a"].ravel(), pred["a"].ravel()), abs=1e-12)
    # "b" is perfect: 1.0, and debris and lake occur in neither truth nor prediction: no IoU there.
    assert (b["mcc"], b["mean_iou"], b["iou_glacier"], b["iou_debris"], b["f1_lake"]) == (1.0, 1.0, 1.0, None, None)
    assert report["per_tile_mean"]["iou_debris"] == pytest.approx(a["iou_debris"])  # only tile "a" counts
    # (H, W, K) probabilities are scored by their argmax.
    probabilities = np.eye(4, dtype=np.float32)[pred["a"]] * 0.7 + 0.075
    again = evaluate.evaluate_multiclass_predictions([truth["a"]], [probabilities], NAMES)
    assert again["tiles"][0]["mcc"] == pytest.approx(a["mcc"])


def test_cli_reports_per_class_and_writes_the_confusion_matrix(multiclass_folders, tmp_path):
    root, masks = multiclass_folders
    out = tmp_path / "report"
    status, stdout, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", masks, "--out", out])
    assert status == 0, stderr
    truth, pred = class_tiles()
    expected = evaluate.evaluate_multiclass_predictions([truth["a"], truth["b"]], [pred["a"], pred["b"]], NAMES)
    report = json.loads((out / "metrics.json").read_text())
    assert (report["task"], report["class_names"], report["class_values"]) == ("multiclass", NAMES, [0, 85, 170, 255])
    summary = report["variants"]["pred"]
    # The no-data pixel of tile 02 (truth background, predicted lake) is ignored.
    matrix = np.array(expected["confusion_matrix"])
    matrix[0, 0] -= 1
    assert summary["confusion_matrix"] == matrix.tolist()
    with open(out / "confusion_matrix.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["true_class"] for row in rows] == NAMES and {row["variant"] for row in rows} == {"pred"}
    assert [[int(row[name]) for name in NAMES] for row in rows] == matrix.tolist()
    with open(out / "per_tile.csv", newline="") as fh:
        tiles = list(csv.DictReader(fh))
    assert list(tiles[0])[:6] == ["tile", "variant", "pixels", "mcc", "mean_iou", "accuracy"]
    assert [t["pixels"] for t in tiles] == ["64", "63"] and tiles[1]["iou_debris"] == ""
    assert float(tiles[0]["iou_debris"]) == pytest.approx(expected["tiles"][0]["iou_debris"], abs=1e-6)
    for name in NAMES:
        assert f"{summary['pooled']['per_class'][name]['iou']:.4f}" in stdout
    for picture in ("confusion_pred.png", "worst_tiles.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_binary_reports_write_a_two_class_matrix_too(multiclass_folders, tmp_path):
    root, masks = multiclass_folders
    for path in [*(root / "label").iterdir(), *masks.iterdir()]:
        tifffile.imwrite(path, np.where(tifffile.imread(path) == 85, 255, 0).astype(np.uint8))
    out = tmp_path / "report"
    status, _, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", masks, "--out", out])
    assert status == 0, stderr
    report = json.loads((out / "metrics.json").read_text())
    pooled = report["variants"]["pred"]["pooled"]
    assert report["task"] == "binary" and report["variants"]["pred"]["confusion_matrix"] == [
        [pooled["tn"], pooled["fp"]], [pooled["fn"], pooled["tp"]]]
    assert pooled["fn"] == 4 and (out / "confusion_pred.png").is_file()


def test_a_value_outside_the_encoding_is_one_error_line(multiclass_folders, tmp_path):
    root, masks = multiclass_folders
    tifffile.imwrite(masks / "B1_02.tif", np.full((8, 8), 42, np.uint8) * (np.arange(8) % 2 == 0) + 85)
    status, stdout, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", masks, "--out", tmp_path / "r"])
    assert status == 2 and stdout == "" and stderr.count("\n") == 1
    assert "B1_02.tif: mask values [127] are outside the encoding (0 background, 85 glacier" in stderr
    label = root / "label" / "Y_01.tif"
    tifffile.imwrite(label, np.full((8, 8), 60, np.uint8))
    tifffile.imwrite(masks / "B1_02.tif", np.zeros((8, 8), np.uint8) + 85)
    status, _, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", masks, "--out", tmp_path / "r"])
    assert status == 2 and stderr.count("\n") == 1
    assert "Y_01.tif: multi-class label values must be 0 background/85 glacier/170 debris/255 lake, found [60]" \
        in stderr


def test_hkh_slices_score_clean_ice_and_debris(tmp_path):
    """An HKH mask's channels (clean ice, debris, region) against 0/85/170 masks: three classes."""
    root, masks = tmp_path / "hkh", tmp_path / "pred"
    root.mkdir()
    masks.mkdir()
    image = np.random.default_rng(1).uniform(0, 1, (8, 8, 15)).astype(np.float32)
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[:, :, 2] = 1
    mask[:3, :, 0] = 1  # clean ice
    mask[6:, :, 1] = 1  # debris
    mask[7, :, 2] = 0  # outside the HKH region: ignored
    np.save(root / "slice_0_image_0.npy", image)
    np.save(root / "slice_0_mask_0.npy", mask)
    pred = np.zeros((8, 8), np.uint8)
    pred[:4] = 85  # one row too many of clean ice
    pred[6:] = 170
    tifffile.imwrite(masks / "slice_0_image_0.tif", pred)
    out = tmp_path / "report"
    status, _, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", masks, "--out", out])
    assert status == 0, stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["class_names"] == ["background", "clean_ice", "debris"]
    assert report["variants"]["pred"]["confusion_matrix"] == [[16, 8, 0], [0, 24, 0], [0, 0, 8]]


def test_class_sets_from_model_configurations():
    assert classes_from_config({}) == ClassSet.binary() == classes_from_config({"task": "binary"})
    hkh = classes_from_config({"task": "multiclass", "class_names": ["background", "clean_ice", "debris"]})
    assert hkh.values == (0, 85, 170) and hkh.num_classes == 3
    given = classes_from_config({"task": "multiclass", "class_names": ["a", "b"], "class_values": [0, 9]})
    assert given.values == (0, 9)
    for config, message in [
        ({"task": "regression"}, "unknown task"),
        ({"task": "multiclass", "class_names": ["rock", "ice"]}, "no phase-2 value"),
        ({"task": "multiclass", "class_names": ["a", "b"], "class_values": [0, 0]}, "do not match"),
    ]:
        with pytest.raises(evaluate.files.InputError, match=message):
            classes_from_config(config, "model.keras")


def test_model_settings_read_the_class_set_and_the_stored_threshold():
    from types import SimpleNamespace

    from keras_glacier.evaluate.cli import model_settings

    def loaded(config):
        return SimpleNamespace(model=SimpleNamespace(get_config=lambda: config), name="model.keras")

    assert model_settings(loaded({"name": "functional", "layers": []})) == (ClassSet.binary(), None)
    classes, threshold = model_settings(loaded({"task": "binary", "threshold": 0.37}))
    assert (classes, threshold) == (ClassSet.binary(), 0.37)
    classes, _ = model_settings(loaded({"task": "multiclass", "class_names": NAMES, "class_values": [0, 85, 170, 255]}))
    assert classes == ClassSet.phase2(NAMES)
