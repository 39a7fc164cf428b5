"""``train --members N --refit`` end to end on tiny demo data: every member refitted, the validated
ensemble choosing the threshold, the refitted ensemble as the run's model, model.pth, resume."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from keras_glacier import TrainConfig
from keras_glacier.errors import UsageError
from keras_glacier.metrics import best_threshold
from keras_glacier.model import GlacierEnsemble
from keras_glacier.training.refit import VALIDATION_RUN
from tests.solution_fixtures import assert_ensemble_pth, assert_solution_reproduces_run
from tests.test_train_cli import TINY, run_cli
from tests.training.test_members_job import member_validation


@pytest.fixture(scope="module")
def refit_members_run(module_tmp):
    run_dir = module_tmp("refit-members") / "run"
    result = run_cli(["--out", str(run_dir), "--epochs", "1", *TINY, "--members", "2", "--refit", "--seed", "3"])
    return run_dir, result


def history_length(path) -> int:
    with open(path, newline="") as fh:
        return len(list(csv.DictReader(fh)))


def last_weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()[-1]


def test_every_member_is_a_refit_run_of_its_own_seed_on_the_shared_split(refit_members_run):
    run_dir, result = refit_members_run
    assert [m.run_dir for m in result.members] == [run_dir / "member-1", run_dir / "member-2"]
    validated_splits = []
    for index, seed in enumerate((3, 4)):
        member = run_dir / f"member-{index + 1}"
        validated = member / VALIDATION_RUN
        for name in ("model.keras", "history.csv", "metrics.json", "split.json"):
            assert (validated / name).is_file() and (member / name).is_file(), f"{member.name}/{name}"
        assert not (member / "model.pth").exists(), "the ensemble's model.pth is the run's; members keep none"
        config = json.loads((member / "config.json").read_text())
        assert (config["seed"], config["members"], config["refit"]) == (seed, 1, True)
        facts = json.loads((member / "run.json").read_text())
        assert (facts["member"], facts["seed"], facts["validated_run"]) == (index + 1, seed, VALIDATION_RUN)
        before, after = (json.loads((folder / "split.json").read_text()) for folder in (validated, member))
        assert before["val"] and sorted(after["train"]) == sorted(before["train"] + before["val"])
        assert history_length(member / "history.csv") == facts["refit_epochs"]
        assert not np.array_equal(last_weights(member / "model.keras"), last_weights(validated / "model.keras"))
        validated_splits.append(before)
    assert validated_splits[0] == validated_splits[1], "the validated members hold out the same tiles"
    assert validated_splits[0]["seed"] == 3, "the split follows the ensemble's seed"
    # One demo data set, the run's: every validated member and every refit reads the same tiles.
    assert sorted(p.name for p in run_dir.rglob("demo_data")) == ["demo_data"]
    assert (run_dir / "demo_data").is_dir()


def test_the_validated_ensemble_chooses_the_threshold_on_its_validation_tiles(refit_members_run):
    run_dir, result = refit_members_run
    validated_dir = run_dir / VALIDATION_RUN
    model = keras.saving.load_model(validated_dir / "model.keras", compile=False)
    assert isinstance(model, GlacierEnsemble) and len(model.members) == 2
    for index, member in enumerate(model.members):
        np.testing.assert_array_equal(member.get_weights()[-1],
                                      last_weights(run_dir / f"member-{index + 1}" / VALIDATION_RUN / "model.keras"))
    config = json.loads((validated_dir / "config.json").read_text())
    assert (config["members"], config["refit"], config["export"]) == (2, False, False)
    assert not (validated_dir / "model.pth").exists()
    validations = [member_validation(run_dir / f"member-{i + 1}" / VALIDATION_RUN, i) for i in (0, 1)]
    truth, mean = validations[0][1], np.mean([v[0] for v in validations], axis=0)
    threshold, _ = best_threshold(truth, mean, ignore_index=255)
    validated = json.loads((validated_dir / "metrics.json").read_text())
    assert validated["threshold"] == pytest.approx(float(threshold), abs=1e-4)
    assert result.validated.run_dir == validated_dir and result.validated.threshold == validated["threshold"]


def test_the_run_is_the_refitted_members_ensemble_deciding_at_one_half(refit_members_run):
    run_dir, result = refit_members_run
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert isinstance(model, GlacierEnsemble) and len(model.members) == 2
    for index, member in enumerate(model.members):
        np.testing.assert_array_equal(member.get_weights()[-1],
                                      last_weights(run_dir / f"member-{index + 1}" / "model.keras"))
    validated = json.loads((run_dir / VALIDATION_RUN / "metrics.json").read_text())
    assert model.threshold == 0.5 and result.threshold == 0.5 and validated["threshold"] != 0.5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    epochs = [json.loads((run_dir / f"member-{i}" / "run.json").read_text())["refit_epochs"] for i in (1, 2)]
    assert (metrics["threshold"], metrics["validated_threshold"]) == (0.5, validated["threshold"])
    marks = ("threshold", "validated_threshold", "refit_epochs", "refit_tiles")
    unmarked = {k: v for k, v in metrics.items() if k not in marks}
    assert unmarked == {k: v for k, v in validated.items() if k not in marks}
    assert metrics["refit_epochs"] == epochs and metrics == result.metrics
    facts = json.loads((run_dir / "run.json").read_text())
    assert (facts["members"], facts["member_seeds"], facts["refit_epochs"]) == (2, [3, 4], epochs)
    assert facts["threshold"] == 0.5 and "member" not in facts
    split = json.loads((run_dir / "split.json").read_text())
    assert split["val"] == [] and split["refit_of"] == VALIDATION_RUN


def test_model_pth_packs_the_refitted_members_and_solution_reproduces_them(refit_members_run):
    run_dir, result = refit_members_run
    assert_ensemble_pth(run_dir, 2, result.threshold)
    assert result.conversion.max_abs_diff <= result.conversion.tolerance
    assert_solution_reproduces_run(run_dir)


def test_resume_keeps_the_finished_member_and_the_validated_run_of_the_other(refit_members_run, tmp_path):
    run_dir, result = refit_members_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.keras", "metrics.json", "model.pth", "run.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / VALIDATION_RUN)
    for name in ("model.keras", "metrics.json", "history.csv", "stats.json"):
        (copy / "member-2" / name).unlink()  # member 2 stopped during its refit
    kept = [(copy / path / "model.keras").stat().st_mtime_ns for path in ("member-1", f"member-2/{VALIDATION_RUN}")]
    resumed = run_cli(["--out", str(copy), "--resume"])
    assert [(copy / path / "model.keras").stat().st_mtime_ns
            for path in ("member-1", f"member-2/{VALIDATION_RUN}")] == kept, "finished parts are not retrained"
    assert history_length(copy / "member-2" / "history.csv") == result.metrics["refit_epochs"][1]
    assert (copy / "model.pth").is_file() and resumed.metrics == result.metrics
    assert resumed.threshold == pytest.approx(result.threshold)


def test_refit_leaves_no_folds_apart():
    with pytest.raises(UsageError, match="--refit cannot be combined with --folds"):
        TrainConfig(refit=True, folds=2)
    assert TrainConfig(refit=True, members=2).members == 2
