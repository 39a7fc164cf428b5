"""``python -m keras_glacier.evaluate`` and its Python API, on hand-made tiles with known answers."""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import csv
import json
import math

import numpy as np
import pytest
import tifffile
from sklearn.metrics import f1_score, jaccard_score, matthews_corrcoef, precision_score, recall_score

from keras_glacier import evaluate, predict
from keras_glacier.data import discover, read_sample, save_split, split_by_scene
from tests.test_predict import make_run, run_cli

SCORES = ("mcc", "iou", "f1", "precision", "recall")


def scores(tp, fp, fn, tn):
    """The textbook formulas, written out independently of keras_glacier.metrics."""
    return {
        "mcc": (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)),
        "iou": tp / (tp + fp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
    }


def sklearn_scores(truth, prediction):
    return {
        "mcc": matthews_corrcoef(truth, prediction),
        "iou": jaccard_score(truth, prediction, zero_division=0),
        "f1": f1_score(truth, prediction, zero_division=0),
        "precision": precision_score(truth, prediction, zero_division=0),
        "recall": recall_score(truth, prediction, zero_division=0),
    }


# Three 8x8 tiles. "perfect": a 3x5 glacier predicted exactly (tp 15, tn 49). "known": a 4x4
# glacier; the prediction misses its bottom row (fn 4, tp 12) and adds a 2x4 block (fp 8); pixel
# (7, 7) is no-data (NaN in one band) and predicted glacier, but ignored: tn 64 - 16 - 8 - 1 = 39.
# "empty": no glacier and none predicted, which is a perfect tile.
KNOWN = {"tp": 12, "fp": 8, "fn": 4, "tn": 39}


def hand_made_tiles():
    truth = {name: np.zeros((8, 8), np.uint8) for name in ("perfect", "known", "empty")}
    prediction = {name: np.zeros((8, 8), np.uint8) for name in truth}
    truth["perfect"][2:5, 1:6] = 1
    prediction["perfect"][2:5, 1:6] = 1
    truth["known"][0:4, 0:4] = 1
    prediction["known"][0:3, 0:4] = 1
    prediction["known"][5:7, 2:6] = 1
    prediction["known"][7, 7] = 1
    return truth, prediction


@pytest.fixture
def hand_made_folders(tmp_path):
    """Band1..Band5 + label/ for the three tiles (ids 01, 02, 03), and masks as predict names them."""
    truth, prediction = hand_made_tiles()
    root, pred = tmp_path / "data", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for band in range(1, 6):
        (root / f"Band{band}").mkdir(parents=True)
    (root / "label").mkdir()
    pred.mkdir()
    for index, name in enumerate(("perfect", "known", "empty"), start=1):
        tile_id = f"{index:02d}"
        for band in range(1, 6):
            data = rng.uniform(100, 200, (8, 8)).astype(np.float32)
            if name == "known" and band == 3:
                data[7, 7] = np.nan
            tifffile.imwrite(root / f"Band{band}" / f"B{band}_{tile_id}.tif", data)
        tifffile.imwrite(root / "label" / f"Y_{tile_id}.tif", truth[name] * 255)
        # 0/255 and 0/1 masks are both accepted.
        tifffile.imwrite(pred / f"B1_{tile_id}.tif", prediction[name] * (255 if name == "perfect" else 1))
    return root, pred


def expected_rows():
    known = scores(**KNOWN)
    return {
        "01": {"tp": 15, "fp": 0, "fn": 0, "tn": 49, **dict.fromkeys(SCORES, 1.0)},
        "02": {**KNOWN, **known},
        "03": {"tp": 0, "fp": 0, "fn": 0, "tn": 64, **dict.fromkeys(SCORES, 1.0)},
    }


def test_known_answers_pooled_and_per_tile(hand_made_folders, tmp_path):
    root, pred = hand_made_folders
    out = tmp_path / "report"
    status, stdout, stderr = run_cli(evaluate.main, ["--labels-from", root, "--pred", pred, "--out", out])
    assert status == 0, stderr
    expected = expected_rows()
    with open(out / "per_tile.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["tile", "variant", "tp", "fp", "fn", "tn", *SCORES]
    assert [row["tile"] for row in rows] == ["01", "02", "03"] and {row["variant"] for row in rows} == {"pred"}
    for row in rows:
        for key, value in expected[row["tile"]].items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), (row["tile"], key)
    report = json.loads((out / "metrics.json").read_text())
    pooled = report["variants"]["pred"]["pooled"]
    totals = {key: sum(row[key] for row in expected.values()) for key in ("tp", "fp", "fn", "tn")}
    assert {key: pooled[key] for key in totals} == totals == {"tp": 27, "fp": 8, "fn": 4, "tn": 152}
    for key, value in scores(**totals).items():
        assert pooled[key] == pytest.approx(value, abs=1e-12)
    mean = report["variants"]["pred"]["per_tile_mean"]
    for key in SCORES:
        assert mean[key] == pytest.approx((2.0 + expected["02"][key]) / 3, abs=1e-12)
    assert mean["mcc"] > pooled["mcc"]  # the two averages really differ here
    assert "pooled" in stdout and "per-tile mean" in stdout and f"{pooled['mcc']:.4f}" in stdout
    assert (out / "worst_tiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_api_matches_sklearn_on_concatenated_pixels():
    truth, prediction = hand_made_tiles()
    truth["known"][7, 7] = 255  # what read_sample makes of the no-data pixel
    names = ["perfect", "known", "empty"]
    report = evaluate.evaluate_predictions([truth[n] for n in names], [prediction[n] for n in names], names)
    valid = np.concatenate([truth[n].ravel() != 255 for n in names])
    y_true = np.concatenate([truth[n].ravel() for n in names])[valid]
    y_pred = np.concatenate([prediction[n].ravel() for n in names])[valid]
    for key, value in sklearn_scores(y_true, y_pred).items():
        assert report["pooled"][key] == pytest.approx(value, abs=1e-12)
    known = report["tiles"][1]
    for key, value in sklearn_scores(truth["known"].ravel()[:-1], prediction["known"].ravel()[:-1]).items():
        assert known[key] == pytest.approx(value, abs=1e-12)
    assert report["num_tiles"] == report["num_scored_tiles"] == 3


def test_per_tile_degenerate_tiles():
    truth_all = np.ones((4, 4), np.uint8)
    ignored = np.full((4, 4), 255, np.uint8)
    empty = np.zeros((4, 4), np.uint8)
    rows = evaluate.per_tile_scores(
        [truth_all, ignored, empty, empty, truth_all],
        [np.ones((4, 4)), np.ones((4, 4)), np.full((4, 4), 0.7), np.full((4, 4), 0.3), np.zeros((4, 4))],
        names=["all glacier, perfect", "all ignored", "false alarm", "empty, probabilities", "all missed"],
    )
    assert [rows[0][k] for k in SCORES] == [1.0] * 5  # MCC is undefined here; a perfect tile is 1
    assert [rows[1][k] for k in SCORES] == [None] * 5 and rows[1]["tn"] == 0  # no valid pixel: no scores
    assert [rows[2][k] for k in SCORES] == [0.0] * 5 and rows[2]["fp"] == 16
    assert [rows[3][k] for k in SCORES] == [1.0] * 5  # 0.3 is not above the 0.5 threshold
    assert [rows[4][k] for k in SCORES] == [0.0] * 5 and rows[4]["fn"] == 16
    summary = evaluate.summarize(rows)
    assert summary["num_scored_tiles"] == 4
    assert summary["per_tile_mean"]["iou"] == pytest.approx(0.5)
    # Threshold semantics shared with solution.py and keras_glacier.metrics: strictly above.
    at_threshold = evaluate.per_tile_scores([np.ones((1, 1), np.uint8)], [np.full((1, 1), 0.5)])
    assert at_threshold[0]["fn"] == 1


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "B1_03.tif: missing prediction for tile '03'"),
        ("shape", "B1_02.tif: prediction size (8, 9) differs from the label size (8, 8)"),
        ("values", "B1_01.tif: prediction values must be 0/255, 0/1 or probabilities"),
        ("nothing", "nothing to evaluate"),
        ("no_labels", "no labels"),
        ("subset_without_split", "--subset train: needs --split"),
        ("split_missing", "split.json: split file not found"),
        ("multiclass_prediction", "B1_02.tif: a multi-class value (85 or 170) in the predictions, but the labels "
                                  "of these 3 tiles hold binary values only"),
    ],
)
def test_bad_input_is_one_error_line(case, expected, hand_made_folders, tmp_path):
    root, pred = hand_made_folders
    argv = ["--labels-from", root, "--pred", pred, "--out", tmp_path / "report"]
    if case == "missing":
        (pred / "B1_03.tif").unlink()
    elif case == "shape":
        tifffile.imwrite(pred / "B1_02.tif", np.zeros((8, 9), np.uint8))
    elif case == "values":
        tifffile.imwrite(pred / "B1_01.tif", np.full((8, 8), 7, np.uint8))
    elif case == "nothing":
        argv = argv[:2] + argv[4:]
    elif case == "no_labels":
        for path in (root / "label").iterdir():
            path.unlink()
        (root / "label").rmdir()
    elif case == "subset_without_split":
        argv += ["--subset", "train"]
    elif case == "split_missing":
        argv += ["--split", tmp_path / "split.json"]
    elif case == "multiclass_prediction":  # one debris pixel: scored as phase 2, the labels' 255 would be lake
        mask = (tifffile.imread(pred / "B1_02.tif") > 0).astype(np.uint8) * 255
        mask[7, 0] = 170
        tifffile.imwrite(pred / "B1_02.tif", mask)
    status, stdout, stderr = run_cli(evaluate.main, argv)
    assert status == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert expected in stderr
    assert not (tmp_path / "report").exists()


@pytest.fixture(scope="module")
def run_with_split(module_tmp, demo_stats, demo_tiff_source):
    images = [read_sample(sample, (0, 1, 2, 3, 4))[0] for sample in demo_tiff_source.samples]
    folder, _ = make_run(module_tmp("eval_run") / "run", demo_stats.to_dict(), images, seed=1)
    train, val = split_by_scene(demo_tiff_source.samples, val_fraction=0.5, seed=0)
    save_split(folder / "split.json", train, val)
    return folder, [sample.sample_id for sample in val]


def test_model_on_the_fly_with_and_without_tta_on_the_val_split(run_with_split, demo_tiff_root, tmp_path):
    run, val_ids = run_with_split
    out = tmp_path / "report"
    argv = ["--labels-from", demo_tiff_root, "--model", run, "--split", run / "split.json", "--out", out, "--worst", 2]
    status, stdout, stderr = run_cli(evaluate.main, argv)
    assert status == 0, stderr
    with open(out / "per_tile.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_variant = {v: {row["tile"]: row for row in rows if row["variant"] == v} for v in ("tta", "no_tta")}
    assert len(rows) == 2 * len(val_ids) and all(sorted(v) == sorted(val_ids) for v in by_variant.values())
    assert "tta " in stdout and "no_tta" in stdout and "(val)" in stdout
    # Each variant scores exactly what predict writes with the same TTA setting.
    for variant, tta in (("tta", True), ("no_tta", False)):
        masks = tmp_path / variant
        predict.predict_folder(run, demo_tiff_root, masks, tta=tta, progress=False)
        for sample in [s for s in discover(demo_tiff_root).samples if s.sample_id in val_ids]:
            label = read_sample(sample, (0, 1, 2, 3, 4))[1]
            mask = tifffile.imread(masks / sample.name) == 255
            valid = label != 255
            row = by_variant[variant][sample.sample_id]
            assert int(row["tp"]) == np.count_nonzero(mask & (label == 1))
            assert int(row["fp"]) == np.count_nonzero(mask & (label == 0))
            assert int(row["fn"]) == np.count_nonzero(~mask & (label == 1))
            assert int(row["tn"]) == np.count_nonzero(~mask & (label == 0) & valid)
    differs = any(by_variant["tta"][t]["tp"] != by_variant["no_tta"][t]["tp"] for t in val_ids)
    assert differs, "TTA and no-TTA must differ somewhere for this check to mean anything"
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["variants"]) == {"tta", "no_tta"} and report["num_tiles"] == len(val_ids)
    assert (out / "worst_tiles.png").stat().st_size > 0
