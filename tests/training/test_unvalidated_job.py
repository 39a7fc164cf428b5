"""``train --val-fraction 0`` end to end on tiny demo data: every tile trains for all the epochs, no
validation, 0.5 as the threshold; as members of an ensemble, model.pth, resume."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from keras_glacier import TrainConfig
from keras_glacier.data.sources import discover
from keras_glacier.errors import InputError, UsageError
from keras_glacier.evaluate.files import select_samples
from keras_glacier.model import GlacierEnsemble
from keras_glacier.training.unvalidated import unvalidated_threshold
from tests.solution_fixtures import assert_ensemble_pth, assert_solution_reproduces_run
from tests.test_train_cli import TINY, run_cli

EPOCHS = 2


@pytest.fixture(scope="module")
def unvalidated_members_run(module_tmp):
    run_dir = module_tmp("unvalidated") / "run"
    result = run_cli(["--out", str(run_dir), "--epochs", str(EPOCHS), *TINY, "--members", "2", "--val-fraction", "0",
                      "--seed", "5"])
    return run_dir, result


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def last_weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()[-1]


def test_every_member_trains_on_every_tile_for_all_the_epochs_and_keeps_the_last(unvalidated_members_run):
    run_dir, result = unvalidated_members_run
    every_tile = sorted(s.sample_id for s in discover(run_dir / "demo_data").samples)
    assert len(every_tile) == 8
    for index, seed in enumerate((5, 6)):
        member = run_dir / f"member-{index + 1}"
        split = json.loads((member / "split.json").read_text())
        assert sorted(split["train"]) == every_tile and split["val"] == [] and split["val_fraction"] == 0
        history = rows(member / "history.csv")
        assert len(history) == EPOCHS, "no early stopping: nothing to follow"
        assert {value for row in history for key, value in row.items() if key.startswith("val_")} <= {"NA"}
        assert not (member / "best.keras").exists() and not (member / "model.pth").exists()
        facts = json.loads((member / "run.json").read_text())
        assert (facts["member"], facts["seed"], facts["threshold"]) == (index + 1, seed, 0.5)
        metrics = json.loads((member / "metrics.json").read_text())
        assert (metrics["epochs"], metrics["tiles"], metrics["threshold"]) == (EPOCHS, 8, 0.5)
        assert metrics["train_mcc"] == pytest.approx(float(history[-1]["mcc"]))
        assert metrics["train_loss"] == pytest.approx(float(history[-1]["loss"]))
        assert not any(key in metrics for key in ("mcc", "iou", "loss")), "no validation score is claimed"
        # The warm-up and cosine span all the epochs: the last epoch's network is annealed.
        schedule = keras.saving.load_model(member / "model.keras").optimizer.get_config()["learning_rate"]["config"]
        assert schedule["warmup_steps"] + schedule["decay_steps"] == EPOCHS * facts["steps_per_epoch"]
        assert result.members[index].threshold == 0.5
    assert not np.array_equal(last_weights(run_dir / "member-1" / "model.keras"),
                              last_weights(run_dir / "member-2" / "model.keras")), "members differ by seed"


def test_the_run_is_the_members_ensemble_deciding_at_one_half(unvalidated_members_run):
    run_dir, result = unvalidated_members_run
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert isinstance(model, GlacierEnsemble) and len(model.members) == 2
    for index, member in enumerate(model.members):
        np.testing.assert_array_equal(member.get_weights()[-1],
                                      last_weights(run_dir / f"member-{index + 1}" / "model.keras"))
    assert model.threshold == 0.5 and result.threshold == 0.5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    members = [json.loads((run_dir / f"member-{i}" / "metrics.json").read_text()) for i in (1, 2)]
    assert metrics["train_mcc"] == pytest.approx((members[0]["train_mcc"] + members[1]["train_mcc"]) / 2)
    assert (metrics["epochs"], metrics["tiles"], metrics["threshold"]) == (EPOCHS, 8, 0.5)
    assert metrics == result.metrics
    facts = json.loads((run_dir / "run.json").read_text())
    assert (facts["members"], facts["member_seeds"], facts["threshold"]) == (2, [5, 6], 0.5)
    assert json.loads((run_dir / "split.json").read_text())["val"] == []


def test_model_pth_packs_the_members_and_solution_reproduces_them(unvalidated_members_run):
    run_dir, result = unvalidated_members_run
    assert_ensemble_pth(run_dir, 2, 0.5)
    assert result.conversion.max_abs_diff <= result.conversion.tolerance
    assert_solution_reproduces_run(run_dir)


def test_resume_retrains_only_the_member_that_had_not_finished(unvalidated_members_run, tmp_path):
    run_dir, result = unvalidated_members_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.keras", "metrics.json", "model.pth", "run.json"):
        (copy / name).unlink()
    for name in ("model.keras", "metrics.json", "history.csv"):
        (copy / "member-2" / name).unlink()  # member 2 stopped before its first epoch ended
    kept = (copy / "member-1" / "model.keras").stat().st_mtime_ns
    resumed = run_cli(["--out", str(copy), "--resume"])
    assert (copy / "member-1" / "model.keras").stat().st_mtime_ns == kept, "a finished member is not retrained"
    assert len(rows(copy / "member-2" / "history.csv")) == EPOCHS
    assert (copy / "model.pth").is_file() and resumed.threshold == 0.5
    assert set(resumed.metrics) == set(result.metrics)


def test_evaluating_the_validation_subset_of_a_run_without_one_says_why(unvalidated_members_run):
    run_dir, _ = unvalidated_members_run
    source = discover(run_dir / "demo_data")
    with pytest.raises(InputError, match=r"val subset is empty \(a --val-fraction 0 run holds no tiles out"):
        select_samples(source, run_dir / "member-1")
    assert len(select_samples(source, run_dir / "member-1", "train")) == 8


def test_without_validation_a_binary_network_decides_at_one_half_or_the_given_threshold():
    assert unvalidated_threshold(TrainConfig(val_fraction=0)) == 0.5
    assert unvalidated_threshold(TrainConfig(val_fraction=0, threshold="0.3")) == pytest.approx(0.3)
    assert unvalidated_threshold(TrainConfig(val_fraction=0, task="multiclass")) is None, "the most probable class"


def test_a_single_run_without_validation_is_routed_to_the_unvalidated_job(monkeypatch, tmp_path):
    """The one-network path (the members fixture above trains its members through the same job)."""
    from keras_glacier.training import fit, unvalidated

    calls = []
    monkeypatch.setattr(unvalidated, "train_unvalidated", lambda config, run_dir, resume, callbacks: calls.append(
        (config.val_fraction, run_dir, resume)) or "result")
    assert fit.train(TrainConfig(val_fraction=0, out=str(tmp_path / "run"))) == "result"
    assert calls == [(0, tmp_path / "run", False)]


@pytest.mark.parametrize("flags, named", [
    ({"val_scenes": "03"}, "--val-scenes 03"),
    ({"folds": 2}, "--folds 2"),
    ({"refit": True}, "--refit"),
])
def test_flags_that_need_validation_tiles_are_refused_without_them(flags, named):
    with pytest.raises(UsageError, match=f"--val-fraction 0 trains without validation, but {named}"):
        TrainConfig(val_fraction=0, **flags)
    assert not TrainConfig(val_fraction=0, members=2).validates and TrainConfig().validates


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.2", False])
def test_val_fraction_outside_zero_to_one_is_refused(value):
    with pytest.raises(UsageError, match=r"--val-fraction must lie in \[0, 1\)"):
        TrainConfig(val_fraction=value)


def test_a_network_trained_without_validation_keeps_statistics_of_all_its_tiles(unvalidated_members_run):
    """--bn-stats tiles (the default) in the run without validation: measured again on every labelled
    tile, whole, the saved member's BatchNorm statistics do not move."""
    from keras_glacier.training.batchnorm import batchnorm_layers, recompute_batchnorm_statistics
    from keras_glacier.training.data import prepare_data, statistics_sequence

    member = unvalidated_members_run[0] / "member-2"
    config = TrainConfig.from_run(member)
    # As the run read it: member 2 of the ensemble seeded 5, whose demo data lies in the run folder.
    _, bands, _, tiles, _, stats, _ = prepare_data(config, member, resume=True, member=(1, 5))
    assert not (member / "demo_data").exists()
    model = keras.saving.load_model(member / "model.keras", compile=False)
    saved = [np.asarray(layer.moving_mean) for layer in batchnorm_layers(model)]
    assert len(tiles) == 8 and config.bn_stats == "tiles"
    recompute_batchnorm_statistics(model, statistics_sequence(config, member, tiles, stats, bands, len(tiles)))
    for layer, mean in zip(batchnorm_layers(model), saved):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-5)
