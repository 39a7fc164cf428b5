"""``train --members N`` end to end on tiny demo data: members, the ensemble, its threshold, model.pth, resume."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from keras_glacier import Segmenter, TrainConfig
from keras_glacier.errors import UsageError
from keras_glacier.inference import keras_forward
from keras_glacier.metrics import best_threshold, confusion_counts, scores_from_counts
from keras_glacier.model import GlacierDeepLab, GlacierEnsemble
from keras_glacier.training.data import make_datasets, prepare_data
from keras_glacier.training.threshold import validation_probabilities
from tests.solution_fixtures import assert_ensemble_pth, assert_solution_reproduces_run
from tests.test_train_cli import TINY, run_cli


@pytest.fixture(scope="module")
def members_run(module_tmp):
    run_dir = module_tmp("members") / "run"
    result = run_cli(["--out", str(run_dir), "--epochs", "2", *TINY, "--members", "2", "--seed", "3"])
    return run_dir, result


def member_validation(member_dir, index, seed=3):
    """(flip-TTA probabilities, labels) of member ``index`` (0-based) of the ensemble of ``seed`` on its
    validation tiles (the demo data is the ensemble's)."""
    config = TrainConfig.from_run(member_dir)
    _, bands, _, train, val, stats, _ = prepare_data(config, member_dir, resume=True, member=(index, seed))
    _, val_seq = make_datasets(config, member_dir, train, val, stats, bands)
    model = keras.saving.load_model(member_dir / "model.keras", compile=False)
    return validation_probabilities(keras_forward(model), val_seq)


def test_each_member_is_a_whole_run_of_its_own_seed_on_the_shared_split(members_run):
    run_dir, result = members_run
    assert [m.run_dir for m in result.members] == [run_dir / "member-1", run_dir / "member-2"]
    splits = []
    for index, seed in enumerate((3, 4)):
        member = run_dir / f"member-{index + 1}"
        for name in ("model.keras", "best.keras", "history.csv", "metrics.json", "curves.png", "split.json"):
            assert (member / name).is_file(), f"{member.name}/{name}"
        assert not (member / "model.pth").exists(), "the ensemble's model.pth is the run's; members keep none"
        config = json.loads((member / "config.json").read_text())
        assert (config["seed"], config["members"], config["out"]) == (seed, 1, str(member))
        facts = json.loads((member / "run.json").read_text())
        assert (facts["member"], facts["seed"]) == (index + 1, seed)
        splits.append(json.loads((member / "split.json").read_text()))
    assert splits[0]["val_scenes"] == splits[1]["val_scenes"], "members must hold out the same tiles"
    assert splits[0]["seed"] == splits[1]["seed"] == 3, "the split follows the ensemble's seed"
    assert json.loads((run_dir / "split.json").read_text()) == splits[0]
    weights = [keras.saving.load_model(run_dir / f"member-{i}" / "model.keras", compile=False).get_weights()[-1]
               for i in (1, 2)]
    assert not np.array_equal(weights[0], weights[1]), "different seeds must train different networks"


def test_the_run_folder_holds_the_ensemble_with_a_threshold_chosen_on_the_average(members_run):
    run_dir, result = members_run
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["members"], config["seed"]) == (2, 3)
    facts = json.loads((run_dir / "run.json").read_text())
    assert facts["members"] == 2 and facts["member_seeds"] == [3, 4] and "member" not in facts
    assert facts["bands_used"] == [0, 1, 2, 4, 5]
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert isinstance(model, GlacierEnsemble) and len(model.members) == 2

    validations = [member_validation(run_dir / f"member-{i + 1}", i) for i in (0, 1)]
    truth = validations[0][1]
    mean = np.mean([v[0] for v in validations], axis=0)
    threshold, mcc = best_threshold(truth, mean, ignore_index=255)
    # The ensemble computes its members' probabilities in its own XLA graph, equal to theirs to ~1e-5
    # (as predictions are, below), so the chosen midpoint between two neighbouring values moves as much.
    assert facts["threshold"] == pytest.approx(float(threshold), abs=1e-4)
    assert facts["threshold"] == result.threshold
    at_stored = scores_from_counts(confusion_counts(truth, mean, facts["threshold"], ignore_index=255))["mcc"]
    assert at_stored == pytest.approx(float(mcc), abs=2e-3)
    assert model.threshold == pytest.approx(facts["threshold"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The ensemble's probability goes through a float32 logit and back: a few pixels at the cut may flip.
    assert metrics["threshold_mcc"] == pytest.approx(float(mcc), abs=2e-3)
    assert set(metrics) >= {"mcc", "iou", "loss", "threshold"} and metrics == result.metrics


def test_predictions_of_the_run_are_the_members_average(members_run):
    run_dir, _ = members_run
    images = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 5)).astype("float32")
    ensemble = Segmenter.from_run(run_dir)
    singles = [Segmenter.from_run(run_dir / f"member-{i}") for i in (1, 2)]
    np.testing.assert_allclose(ensemble.predict(images), np.mean([s.predict(images) for s in singles], axis=0),
                               atol=1e-5)
    assert ensemble.threshold == pytest.approx(json.loads((run_dir / "run.json").read_text())["threshold"])


def test_model_pth_packs_both_members_and_solution_reproduces_the_ensemble(members_run):
    run_dir, result = members_run
    assert_ensemble_pth(run_dir, 2, result.threshold)
    assert_solution_reproduces_run(run_dir)


def test_resume_keeps_finished_members_and_trains_the_missing_one(members_run, tmp_path):
    run_dir, result = members_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.keras", "metrics.json", "model.pth", "run.json"):
        (copy / name).unlink(missing_ok=True)
    shutil.rmtree(copy / "member-2")  # stopped before the second member began
    kept = (copy / "member-1" / "model.keras").stat().st_mtime_ns
    resumed = run_cli(["--out", str(copy), "--resume"])
    assert (copy / "member-1" / "model.keras").stat().st_mtime_ns == kept, "a finished member is not retrained"
    assert (copy / "member-2" / "model.keras").is_file() and (copy / "model.pth").is_file()
    assert isinstance(keras.saving.load_model(copy / "model.keras", compile=False), GlacierEnsemble)
    assert resumed.members[0].metrics == result.members[0].metrics


def test_members_and_folds_are_one_or_the_other():
    with pytest.raises(UsageError, match="--members"):
        TrainConfig(members=2, folds=2)
    with pytest.raises(UsageError, match="--members must be a whole number of at least 1"):
        TrainConfig(members=0)


def test_a_member_is_a_plain_network_that_converts_on_its_own(members_run, tmp_path):
    from convert import convert_model

    run_dir, _ = members_run
    report = convert_model(run_dir / "member-2", tmp_path / "model.pth")
    assert report.members == 1 and report.max_abs_diff <= report.tolerance
    assert isinstance(keras.saving.load_model(run_dir / "member-2" / "model.keras", compile=False), GlacierDeepLab)
