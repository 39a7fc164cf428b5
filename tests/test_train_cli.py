"""The training job end to end on tiny demo data: outputs, resume, errors, data-parallel."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_glacier import TrainConfig, train, xla_cpu

TINY = ["--demo-tiles", "8", "--demo-size", "64", "--batch-size", "2", "--workers", "1",
        "--samples-per-epoch", "6"]


def run_cli(argv):
    """The job as the command line runs it, in this process (returns the RunResult)."""
    args = train.build_parser().parse_args(argv)
    return train.train(train.config_from_args(args), resume=args.resume, overwrite=args.overwrite)


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def finished_run(module_tmp):
    run_dir = module_tmp("run") / "demo"
    # A higher peak rate than the default, so the two epochs differ (issue 16: max vs min mode must matter).
    # With the XLA:CPU kernels, as CPU users train (the suite's default is the stock ops, tests/conftest.py).
    with xla_cpu.kernels("auto"):
        result = run_cli(["--out", str(run_dir), "--epochs", "2", *TINY, "--samples-per-epoch", "8", "--lr", "3e-3"])
    return run_dir, result


def test_default_job_writes_every_artefact(finished_run):
    run_dir, result = finished_run
    for name in ("model.keras", "best.keras", "model.pth", "stats.json", "config.json", "run.json", "split.json",
                 "metrics.json", "history.csv", "curves.png", "predictions.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists(), "a finished run keeps no resume backup"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"mcc", "iou", "f1", "precision", "recall", "r2", "threshold", "threshold_mcc"}
    assert metrics == result.metrics and result.run_dir == run_dir
    assert 0 < metrics["threshold"] < 1 and -1 <= metrics["threshold_mcc"] <= 1
    assert history_epochs(run_dir) == [0, 1]
    split = json.loads((run_dir / "split.json").read_text())
    assert set(split["train_scenes"]).isdisjoint(split["val_scenes"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config == dataclasses.asdict(result.config) and config["epochs"] == 2 and config["bands"] == "competition"
    facts = json.loads((run_dir / "run.json").read_text())
    assert facts["bands_used"] == [0, 1, 2, 4, 5] and facts["threshold"] == metrics["threshold"]
    assert facts["samples_per_epoch"] == 8 and facts["steps_per_epoch"] == 4


def test_saved_model_carries_the_run_statistics(finished_run):
    run_dir, _ = finished_run
    stats = json.loads((run_dir / "stats.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras")
    norm = model.get_layer("normalize")
    for key in ("lo", "hi", "mean", "std"):
        assert getattr(norm, key).numpy().tolist() == pytest.approx(stats[key], rel=1e-6)


def test_existing_run_is_never_overwritten_by_accident(finished_run, capsys):
    run_dir, _ = finished_run
    before = (run_dir / "model.keras").stat().st_mtime_ns
    code = train.main(["--out", str(run_dir), "--epochs", "1", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "--resume" in err and "\n" not in err
    assert (run_dir / "model.keras").stat().st_mtime_ns == before


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_out_that_is_a_file_gets_one_line(below, tmp_path, capsys):
    (tmp_path / "f").write_text("kept")
    out = tmp_path / "f" / below if below else tmp_path / "f"
    assert train.main(["--out", str(out), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {out}: {tmp_path / 'f'} is a file, not a folder; give a run folder"
    assert (tmp_path / "f").read_text() == "kept"


@pytest.mark.parametrize("extra", [[], ["--val-fraction", "0"]], ids=["validated", "no-validation"])
def test_a_diverged_run_stops_with_one_line_and_saves_nothing(extra, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--epochs", "2", "--lr", "1e12", *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged: the loss was nan in epoch 1") and "\n" not in err
    assert err.endswith("train again at a lower --lr (this run: 1e+12)")
    assert not (out / "model.keras").exists() and not (out / "model.pth").exists()
    assert not (out / "best.keras").exists()
    assert not (out / "history.csv").exists() or history_epochs(out) == [], "the diverged epoch is not kept"


def test_predict_evaluate_and_convert_refuse_a_keras_model_with_non_finite_weights(finished_run, tmp_path, capsys):
    from convert.__main__ import main as convert_main
    from keras_glacier import evaluate, predict
    from keras_glacier.fileio import save_keras_model

    run_dir, _ = finished_run
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    variable = model.trainable_weights[0]
    variable.assign(keras.ops.full(variable.shape, float("nan")))
    broken = tmp_path / "diverged.keras"
    save_keras_model(model, broken)
    data = run_dir / "demo_data"
    for main, argv in ((predict.main, [str(broken), "--data", str(data), "--out", str(tmp_path / "masks")]),
                       (evaluate.main, ["--labels-from", str(data), "--model", str(broken), "--out",
                                        str(tmp_path / "report")]),
                       (convert_main, [str(broken), "-o", str(tmp_path / "model.pth")])):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {broken}: weights hold NaN or infinite values (") and "\n" not in err
    from convert import convert_model
    from keras_glacier.errors import InputError

    with pytest.raises(InputError, match="weights hold NaN or infinite values"):  # the training export's path
        convert_model(model, tmp_path / "model.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.keras"]


class KillAfterEpoch(keras.callbacks.Callback):
    """Simulates a run killed after the backup of ``epoch`` was written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("killed")


def test_resume_continues_from_the_saved_epoch(tmp_path, capsys):
    """Killed after epoch 0 and resumed; with the weight average on (--ema), whose raw weights the backup
    keeps and whose average validation, the checkpoint and the saved model use. The finished run, on
    few tiles, ends with the advice to train the model to use on all of them."""
    from keras_glacier.callbacks import read_history
    from keras_glacier.training import fit

    run_dir = tmp_path / "run"
    # --bn-stats running: the saved model is the checkpoint's network as validation scored it.
    args = train.build_parser().parse_args(["--out", str(run_dir), "--epochs", "2", "--no-export", "--ema", "0.9",
                                            "--bn-stats", "running", *TINY])
    with pytest.raises(RuntimeError, match="killed"):
        train.train(train.config_from_args(args), callbacks=[KillAfterEpoch(0)])
    assert (run_dir / "backup").is_dir() and not (run_dir / "model.keras").exists()
    assert history_epochs(run_dir) == [0]
    assert "few tiles" not in capsys.readouterr().out, "a killed run has no scores to advise on"

    seen = []
    args = train.build_parser().parse_args(["--out", str(run_dir), "--resume"])
    result = train.train(train.config_from_args(args), resume=True, callbacks=[RecordEpochs(seen)])
    assert seen == [1], "the resumed run starts at the epoch after the last completed one"
    split = json.loads((run_dir / "split.json").read_text())
    advice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("few tiles")]
    assert advice == [fit.few_tiles_advice(result.config, len(split["train"]), len(split["val"]))]
    assert f"on {len(split['val'])} held-out tiles" in advice[0] and "--val-fraction 0 --epochs 45" in advice[0]
    assert history_epochs(run_dir) == [0, 1]
    assert (run_dir / "model.keras").is_file() and result.config.ema == 0.9
    assert result.metrics["mcc"] == pytest.approx(max(read_history(run_dir / "history.csv")["val_mcc"]), abs=1e-5)
    saved, best = (keras.saving.load_model(run_dir / name, compile=False) for name in ("model.keras", "best.keras"))
    for mine, theirs in zip(saved.non_trainable_weights, best.non_trainable_weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_few_tiles_advice_is_for_small_datasets_only():
    from keras_glacier.data.sampling import MIN_STEPS
    from keras_glacier.training import fit

    config = TrainConfig(batch_size=4)
    small = fit.few_tiles_advice(config, 9, 3)
    assert small.startswith("few tiles: these scores measure the recipe on 3 held-out tiles")
    assert "all 12 labelled tiles with --val-fraction 0 --epochs 45" in small and "--members 2" in small
    assert fit.few_tiles_advice(config, MIN_STEPS * 4 - 1, 8) is not None
    assert fit.few_tiles_advice(config, MIN_STEPS * 4, 8) is None, "the demo's 48 and larger sets get no advice"
    assert fit.few_tiles_advice(dataclasses.replace(config, batch_size=2), 20, 5) is None


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data", "/no/such/folder"], "no such folder"),
        (["--crop", "100"], "multiple of 16"),
        (["--alpha", "2"], "--alpha"),
        (["--resume"], "--resume needs --out"),
        (["--pretrained", "/no/such/file.pth"], "no such file"),
        (["--samples-per-epoch", "0"], "--samples-per-epoch"),
        (["--task", "multiclass", "--threshold", "0.3"], "binary task only"),
    ],
)
def test_user_mistakes_get_one_line(argv, expected, tmp_path, capsys):
    code = train.main([*argv, "--out", str(tmp_path / "r")] if "--resume" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and expected in err and "\n" not in err


def test_bad_data_folder_names_the_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "slice_0_image_0.npy").write_bytes(b"not a numpy file")
    code = train.main(["--data", str(data), "--out", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "slice_0" in err and "\n" not in err


def test_help_explains_every_flag():
    text = train.build_parser().format_help()
    for action in train.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest
    assert "--distribute" in text and "--precision" in text


def test_trained_model_scores_the_same_in_keras_and_in_solution(finished_run, tmp_path):
    """The shipped model.pth, run by the PyTorch-only submission, reproduces the Keras model's scores."""
    import solution
    from keras_glacier.data.export import export_band_folders
    from keras_glacier.data.sources import discover
    from keras_glacier.data.split import load_split
    from keras_glacier.evaluate import evaluate

    run_dir, _ = finished_run
    _, val = load_split(run_dir / "split.json", discover(run_dir / "demo_data").samples)
    band_dir = tmp_path / "val_bands"
    export_band_folders(val, json.loads((run_dir / "run.json").read_text())["bands_used"], band_dir)
    keras_report = evaluate(band_dir, model=run_dir, progress=False)
    masks = solution.maskgeration(str(band_dir), str(tmp_path / "pred"), weights=run_dir / "model.pth",
                                  progress=False)
    assert len(masks) == len(val)
    torch_report = evaluate(band_dir, pred_dir=tmp_path / "pred", progress=False)
    keras_pooled = keras_report["variants"]["tta"]["pooled"]
    torch_pooled = torch_report["variants"]["pred"]["pooled"]
    assert abs(keras_pooled["mcc"] - torch_pooled["mcc"]) < 1e-3
    differing = sum(abs(keras_pooled[k] - torch_pooled[k]) for k in ("tp", "fp", "fn", "tn"))
    assert differing <= 1e-4 * sum(torch_pooled[k] for k in ("tp", "fp", "fn", "tn"))


def test_pretrained_torchvision_weights_initialise_the_encoder(tmp_path):
    """--pretrained: a torchvision-layout ResNet-34 file on disk lands in the Keras encoder."""
    import numpy as np
    import torch

    import solution
    from keras_glacier.data.stats import BandStats

    encoder = solution.ResNetEncoder(3).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) if v.is_floating_point() else v) for k, v in encoder.items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    stats = BandStats(lo=(0.0,) * 5, hi=(1.0,) * 5, mean=(0.5,) * 5, std=(0.2,) * 5)
    model = train.build_model(train.TrainConfig(pretrained=str(path)), stats, num_bands=5)
    backbone = model.get_layer("backbone")
    kernel = backbone.get_layer("layer3.2.conv1").kernel.numpy()
    np.testing.assert_allclose(kernel, state["layer3.2.conv1.weight"].numpy().transpose(2, 3, 1, 0))
    stem = backbone.get_layer("conv1").kernel.numpy()  # (7, 7, 5, 64): band k gets RGB filter k % 3, x 3/5
    rgb = state["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    for band in range(5):
        np.testing.assert_allclose(stem[:, :, band], rgb[:, :, band % 3] * 3 / 5, rtol=1e-6)


def test_aspp_rates_reach_the_model_and_its_saved_config():
    from keras_glacier.constants import ASPP_RATES
    from keras_glacier.data.stats import BandStats
    from keras_glacier.model import GlacierDeepLab
    from keras_glacier.training.config import aspp_rates

    stats = BandStats(lo=(0.0,) * 5, hi=(1.0,) * 5, mean=(0.5,) * 5, std=(0.2,) * 5)
    config = train.config_from_args(train.build_parser().parse_args(["--aspp-rates", "2,4,6"]))
    small = train.build_model(config, stats, num_bands=5)
    assert small.get_config()["aspp_rates"] == [2, 4, 6]
    assert GlacierDeepLab.from_config(small.get_config()).aspp_rates == [2, 4, 6]
    # The rates are the dilations of the three atrous branches (FastConv2D's dilation is checked against
    # Keras's Conv2D in tests/model/test_xla_cpu.py).
    assert [small.get_layer(f"aspp.b{i}.conv").dilation_rate for i in (1, 2, 3)] == [(2, 2), (4, 4), (6, 6)]
    assert aspp_rates(train.TrainConfig().aspp_rates) == ASPP_RATES == (6, 12, 18)


def test_affine_probability_reaches_the_training_augmentation_only(finished_run):
    import dataclasses

    from keras_glacier.constants import AFFINE_PROBABILITY
    from keras_glacier.data.sampling import MIN_STEPS
    from keras_glacier.training import fit

    run_dir, result = finished_run
    _, bands, _, train_tiles, val, stats, _ = fit.prepare_data(result.config, run_dir, resume=True)
    assert result.config.affine == "auto" and len(train_tiles) < MIN_STEPS * result.config.batch_size
    train_seq, val_seq = fit.make_datasets(result.config, run_dir, train_tiles, val, stats, bands)
    assert train_seq.augmenter.config.affine == AFFINE_PROBABILITY and val_seq.augmenter is None
    assert "Affine" in repr(train_seq.augmenter.config.spatial())
    assert fit.rotation_note(train_seq) == f", free rotation and zoom p={AFFINE_PROBABILITY:g}"
    for given in (0.6, 0.0):
        train_seq, _ = fit.make_datasets(dataclasses.replace(result.config, affine=given), run_dir, train_tiles,
                                         val, stats, bands)
        assert train_seq.augmenter.config.affine == given
    assert "Affine" not in repr(train_seq.augmenter.config.spatial()) and fit.rotation_note(train_seq) == ""
    no_aug = dataclasses.replace(result.config, augment=False)
    train_seq, _ = fit.make_datasets(no_aug, run_dir, train_tiles, val, stats, bands)
    assert train_seq.augmenter is None


def test_encoder_auto_gives_a_small_dataset_resnet18_everywhere_the_model_goes(finished_run):
    import dataclasses

    import torch

    from keras_glacier.data.sampling import MIN_STEPS, min_steps
    from keras_glacier.training import fit

    run_dir, result = finished_run
    _, bands, _, train_tiles, val, stats, _ = fit.prepare_data(result.config, run_dir, resume=True)
    assert result.config.encoder == "auto" and len(train_tiles) < MIN_STEPS * result.config.batch_size
    assert json.loads((run_dir / "run.json").read_text())["encoder"] == "resnet18"
    saved = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert saved.get_config()["encoder"] == "resnet18"
    assert sum(name.startswith("layer3.") and name.endswith(".conv1")
               for name in (layer.name for layer in saved.get_layer("backbone").layers)) == 2
    assert torch.load(run_dir / "model.pth", weights_only=True)["config"]["encoder"] == "resnet18"
    # The default epoch of a small dataset is the ResNet-18 floor: twice the ResNet-34 steps.
    default_epoch = dataclasses.replace(result.config, samples_per_epoch=None)
    train_seq, _ = fit.make_datasets(default_epoch, run_dir, train_tiles, val, stats, bands)
    assert len(train_seq) == min_steps("resnet18") == 2 * min_steps("resnet34")
    chosen = dataclasses.replace(default_epoch, encoder="resnet34")
    train_seq, _ = fit.make_datasets(chosen, run_dir, train_tiles, val, stats, bands)
    assert len(train_seq) == MIN_STEPS
    assert fit.build_model(chosen, stats, len(bands), encoder=fit.encoder_for(chosen, len(train_tiles))
                           ).get_config()["encoder"] == "resnet34"


def test_checkpoint_and_early_stopping_follow_the_validation_mcc_upwards(finished_run):
    from keras_glacier.training import fit

    run_dir, result = finished_run
    _, bands, _, train_tiles, val, stats, _ = fit.prepare_data(result.config, run_dir, resume=True)
    train_seq, val_seq = fit.make_datasets(result.config, run_dir, train_tiles, val, stats, bands)
    callbacks = fit.make_callbacks(result.config, run_dir, train_seq, val_seq, stats, resume=True)
    watched = [c for c in callbacks if isinstance(c, (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping))]
    assert len(watched) == 2 and all((c.monitor, c.mode) == ("val_mcc", "max") for c in watched)


def test_the_model_is_the_best_epoch_with_statistics_of_the_training_tiles(finished_run):
    """The exported model has the learned weights of the epoch with the highest validation MCC (not the
    last, not the lowest) and BatchNorm statistics recomputed on the training tiles (--bn-stats tiles,
    the default); metrics.json scores that network."""
    from keras_glacier.callbacks import read_history
    from keras_glacier.training import fit
    from keras_glacier.training.batchnorm import MIN_VALUES, batchnorm_layers

    run_dir, result = finished_run
    val_mcc = read_history(run_dir / "history.csv")["val_mcc"]
    assert len(set(val_mcc)) > 1, f"the fixture's epochs must differ to tell max from min: {val_mcc}"
    best = keras.saving.load_model(run_dir / "best.keras")  # compiled: its metrics are the run's
    saved = keras.saving.load_model(run_dir / "model.keras", compile=False)
    for mine, theirs in zip(saved.trainable_weights, best.trainable_weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    _, bands, _, train_tiles, val, stats, _ = fit.prepare_data(result.config, run_dir, resume=True)
    _, val_seq = fit.make_datasets(result.config, run_dir, train_tiles, val, stats, bands)
    assert best.evaluate(val_seq, verbose=0, return_dict=True)["mcc"] == pytest.approx(max(val_mcc), abs=1e-5)
    moved = {a.name: not np.allclose(np.asarray(a.moving_variance), np.asarray(b.moving_variance))
             for a, b in zip(batchnorm_layers(saved), batchnorm_layers(best))}
    # The fixture's 4 training tiles are too few for the image-pool layer (one value per tile): it keeps
    # the best epoch's statistics; every other layer's were recomputed.
    assert len(train_tiles) < MIN_VALUES
    assert {name for name, changed in moved.items() if not changed} == {"aspp.pool.bn"}
    best.set_weights(saved.get_weights())
    assert best.evaluate(val_seq, verbose=0, return_dict=True)["mcc"] == pytest.approx(result.metrics["mcc"], abs=1e-5)


def test_the_saved_statistics_are_those_of_the_training_tiles(finished_run):
    """Measured again on the run's training tiles, the saved model's statistics do not move."""
    from keras_glacier.training import fit
    from keras_glacier.training.batchnorm import batchnorm_layers, recompute_batchnorm_statistics
    from keras_glacier.training.data import statistics_sequence

    run_dir, result = finished_run
    _, bands, _, train_tiles, _, stats, _ = fit.prepare_data(result.config, run_dir, resume=True)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    saved = [np.asarray(layer.moving_variance) for layer in batchnorm_layers(model)]
    recompute_batchnorm_statistics(model, statistics_sequence(result.config, run_dir, train_tiles, stats, bands,
                                                              len(train_tiles)))
    for layer, variance in zip(batchnorm_layers(model), saved):
        np.testing.assert_allclose(np.asarray(layer.moving_variance), variance, rtol=1e-4, atol=1e-6)


def test_segmenter_from_the_run_predicts_like_the_predict_command(finished_run):
    import numpy as np

    import keras_glacier
    from keras_glacier.inference import keras_forward, load_run, predict_probabilities

    run_dir, result = finished_run
    segmenter = keras_glacier.Segmenter.from_run(run_dir)
    assert segmenter.threshold == pytest.approx(result.threshold) and segmenter.bands == [0, 1, 2, 4, 5]
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.5, (2, 64, 64, 5)).astype(np.float32)
    images[..., 4] += 260.0
    probs = segmenter.predict(images)
    expected = predict_probabilities(keras_forward(load_run(run_dir).model), list(images))
    assert probs.shape == (2, 64, 64)
    np.testing.assert_allclose(probs, np.stack(expected), atol=1e-5)
    labels = segmenter.predict(images, return_labels=True)
    np.testing.assert_array_equal(labels, (probs > segmenter.threshold).astype(np.uint8))
    assert keras_glacier.Segmenter.from_run(run_dir / "model.keras").predict(images[0], tta=False).shape == (64, 64)
    with pytest.raises(keras_glacier.errors.InputError, match="raw bands"):
        segmenter.predict(images[..., :3])
