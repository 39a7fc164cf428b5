"""``train --refit`` end to end on tiny demo data: the validated run, the refit on all its tiles, model.pth, resume."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest
import torch

from keras_glacier import Segmenter, TrainConfig
from keras_glacier.data.sampling import auto_affine
from keras_glacier.data.stats import BandStats
from keras_glacier.errors import InputError
from keras_glacier.training.refit import VALIDATION_RUN, best_epoch, refit_epoch_count, refit_settings
from keras_glacier.training.run_folder import RunResult
from tests.solution_fixtures import assert_solution_reproduces_run
from tests.test_train_cli import TINY, run_cli


@pytest.fixture(scope="module")
def refit_run(module_tmp):
    run_dir = module_tmp("refit") / "run"
    result = run_cli(["--out", str(run_dir), "--epochs", "4", *TINY, "--refit", "--seed", "3"])
    return run_dir, result


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def validated_best_epoch(validated_dir) -> int:
    """The validated run's kept epoch, read from its history the plain way (first best val_mcc, 1-based)."""
    history = rows(validated_dir / "history.csv")
    scores = [float(row["val_mcc"]) for row in history]
    return int(history[scores.index(max(scores))]["epoch"]) + 1


def test_the_validated_run_is_a_whole_ordinary_run_in_its_own_folder(refit_run):
    run_dir, result = refit_run
    validated = run_dir / VALIDATION_RUN
    for name in ("model.keras", "best.keras", "history.csv", "metrics.json", "split.json", "stats.json", "curves.png"):
        assert (validated / name).is_file(), name
    assert not (validated / "model.pth").exists(), "the run's model.pth is the refitted network's"
    config = json.loads((validated / "config.json").read_text())
    assert (config["refit"], config["export"], config["out"]) == (False, False, str(validated))
    assert len(rows(validated / "history.csv")) == 4 and "val_mcc" in rows(validated / "history.csv")[0]
    assert result.validated.run_dir == validated
    assert json.loads((run_dir / "config.json").read_text())["refit"] is True


def test_the_refit_trains_on_every_labelled_tile_for_its_best_epoch_or_three_quarters_of_the_epochs(refit_run):
    run_dir, _ = refit_run
    validated = run_dir / VALIDATION_RUN
    split, before = (json.loads((folder / "split.json").read_text()) for folder in (run_dir, validated))
    assert before["val"], "the validated run holds tiles out"
    assert sorted(split["train"]) == sorted(before["train"] + before["val"]) and split["val"] == []
    history = rows(run_dir / "history.csv")
    assert len(history) == max(validated_best_epoch(validated), 3), "--epochs 4: at least 3 (--refit-epochs auto)"
    # Keras' CSVLogger keeps the compiled metrics' val_ columns, empty ("NA"): the refit validates on nothing.
    assert {value for row in history for key, value in row.items() if key.startswith("val_")} <= {"NA"}
    facts = json.loads((run_dir / "run.json").read_text())
    assert facts["refit_epochs"] == len(history) and facts["refit_tiles"] == len(split["train"])
    assert facts["samples_per_epoch"] == json.loads((validated / "run.json").read_text())["samples_per_epoch"]
    # Its warm-up and cosine span its own epochs (it ends annealed), not the validated run's --epochs.
    schedule = keras.saving.load_model(run_dir / "model.keras").optimizer.get_config()["learning_rate"]["config"]
    assert schedule["warmup_steps"] + schedule["decay_steps"] == len(history) * facts["steps_per_epoch"]
    # The statistics are the refit's own, over all its tiles, and differ from the validated run's.
    stats, old = BandStats.load(run_dir / "stats.json"), BandStats.load(validated / "stats.json")
    assert not np.allclose(stats.mean, old.mean)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    np.testing.assert_allclose(model.get_config()["stats"]["mean"], stats.mean, rtol=1e-6)
    first = keras.saving.load_model(validated / "model.keras", compile=False)
    assert not np.array_equal(model.get_weights()[-1], first.get_weights()[-1]), "a fresh network is trained"


def test_the_refit_decides_at_one_half_and_keeps_the_validated_scores(refit_run):
    run_dir, result = refit_run
    validated = json.loads((run_dir / VALIDATION_RUN / "metrics.json").read_text())
    assert 0.0 < validated["threshold"] < 1.0 and validated["threshold"] != 0.5
    assert result.threshold == 0.5 and json.loads((run_dir / "run.json").read_text())["threshold"] == 0.5
    assert Segmenter.from_run(run_dir).threshold == 0.5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["threshold"], metrics["validated_threshold"]) == (0.5, validated["threshold"])
    marks = ("threshold", "validated_threshold", "refit_epochs", "refit_tiles")
    unmarked = {k: v for k, v in metrics.items() if k not in marks}
    assert unmarked == {k: v for k, v in validated.items() if k not in marks}
    assert metrics["refit_epochs"] == max(validated_best_epoch(run_dir / VALIDATION_RUN), 3)
    assert metrics == result.metrics


def test_model_pth_is_the_refitted_network_and_solution_reproduces_it(refit_run):
    run_dir, result = refit_run
    assert result.model_pth == run_dir / "model.pth" and result.conversion.max_abs_diff <= result.conversion.tolerance
    content = torch.load(run_dir / "model.pth", map_location="cpu", weights_only=True)
    assert content["config"]["threshold"] == pytest.approx(result.threshold)
    assert_solution_reproduces_run(run_dir)


def test_refit_runs_pack_into_one_ensemble_model_pth(refit_run, tmp_path):
    """The README's way to ensemble refits: python -m convert RUN_A RUN_B (here a refit and its validated run)."""
    from convert import convert_models

    run_dir, result = refit_run
    report = convert_models([run_dir, run_dir / VALIDATION_RUN], tmp_path / "model.pth")
    assert report.members == 2 and report.max_abs_diff <= report.tolerance
    content = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier-ensemble/1"


def test_evaluating_the_refit_run_on_its_validation_tiles_points_to_the_validated_run(refit_run):
    from keras_glacier.data.sources import discover
    from keras_glacier.evaluate.files import select_samples

    run_dir, _ = refit_run
    source = discover(run_dir / "demo_data")  # the run's demo data, which its validated run read too
    assert len(select_samples(source, run_dir, "train")) == len(source.samples)
    with pytest.raises(InputError, match=f"val subset is empty .*{VALIDATION_RUN}/split.json"):
        select_samples(source, run_dir)
    assert select_samples(source, run_dir / VALIDATION_RUN)  # the validated run's own split has them


def test_resume_keeps_the_validated_run_and_trains_only_the_refit(refit_run, tmp_path):
    run_dir, result = refit_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.keras", "metrics.json", "model.pth", "history.csv"):
        (copy / name).unlink()  # stopped before the refit ended
    kept = (copy / VALIDATION_RUN / "model.keras").stat().st_mtime_ns
    resumed = run_cli(["--out", str(copy), "--resume"])
    assert (copy / VALIDATION_RUN / "model.keras").stat().st_mtime_ns == kept, "the validated run is not retrained"
    assert len(rows(copy / "history.csv")) == result.metrics["refit_epochs"]
    assert (copy / "model.pth").is_file() and resumed.metrics == result.metrics
    again = run_cli(["--out", str(copy), "--resume"])  # finished: nothing is trained again
    assert (copy / "model.keras").stat().st_mtime_ns == (again.model).stat().st_mtime_ns
    assert again.metrics == result.metrics


def test_refit_settings_pin_what_the_validated_run_resolved_from_its_tile_count():
    config = TrainConfig(refit=True, encoder="auto", affine="auto", batch_size=4)
    validated = RunResult(None, config, {}, threshold=0.37)
    settings = refit_settings(config, validated, {"encoder": "resnet18", "samples_per_epoch": 32}, train_tiles=6,
                              epochs=7)
    assert (settings.encoder, settings.samples_per_epoch, settings.refit) == ("resnet18", 32, False)
    assert settings.epochs == 7, "the refit's schedule spans its own epochs"
    assert settings.affine == auto_affine(6, 4) and settings.threshold == 0.5, "not the validated 0.37"
    fixed = refit_settings(config.replace(threshold=0.3, affine=0.0), validated,
                           {"encoder": "resnet34", "samples_per_epoch": 8}, train_tiles=6, epochs=3)
    assert (fixed.threshold, fixed.affine) == (0.3, 0.0), "--threshold and --affine given are kept"
    multiclass = refit_settings(config.replace(task="multiclass"), RunResult(None, config, {}),
                                {"encoder": "resnet34", "samples_per_epoch": 8}, train_tiles=6, epochs=3)
    assert multiclass.threshold == "auto"


def test_best_epoch_is_the_first_best_validation_mcc_by_its_epoch_number(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_mcc\n0,1.0,0.2\n1,0.9,0.5\n2,0.8,nan\n3,0.7,0.5\n4,0.6,0.1\n")
    assert best_epoch(path) == 2
    path.write_text("epoch,val_mcc\n5,0.1\n6,0.4\n7,0.3\n")  # a history whose first rows were cut
    assert best_epoch(path) == 7
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(InputError, match="no val_mcc"):
        best_epoch(path)
    with pytest.raises(InputError, match="history.csv"):
        best_epoch(tmp_path / "missing" / "history.csv")


def test_refit_epochs_are_the_best_epoch_at_least_three_quarters_of_epochs_or_as_given():
    config = TrainConfig(epochs=40, refit=True)
    assert [refit_epoch_count(config, best) for best in (1, 7, 29, 30, 31, 40)] == [30, 30, 30, 30, 31, 40]
    assert refit_epoch_count(config.replace(epochs=5), 1) == 4, "three quarters of 5 is rounded up"
    assert [refit_epoch_count(config.replace(refit_epochs="best"), best) for best in (1, 7, 33)] == [1, 7, 33]
    assert [refit_epoch_count(config.replace(refit_epochs=12), best) for best in (1, 7, 33)] == [12, 12, 12]
