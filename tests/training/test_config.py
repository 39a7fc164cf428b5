"""TrainConfig is the one home of the settings: flags derive from it, config.json is its dict."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from keras_glacier import cli
from keras_glacier.errors import GlacierError, InputError, UsageError
from keras_glacier.training.cli import INVOCATION_FLAGS, build_parser, config_from_args
from keras_glacier.training.config import TrainConfig, flag_of


def test_every_field_is_a_flag_and_every_flag_a_field():
    parser = build_parser()
    dests = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert dests == fields | set(INVOCATION_FLAGS)
    for f in dataclasses.fields(TrainConfig):
        action = next(a for a in parser._actions if a.dest == f.name)
        assert action.option_strings == [flag_of(f.name)]
        assert f.metadata["help"] in action.help.replace("%%", "%")  # help text comes from the field
        if f.metadata.get("choices"):
            assert tuple(action.choices) == f.metadata["choices"]


def test_no_flags_give_the_field_defaults_and_flags_override_them():
    assert config_from_args(build_parser().parse_args([])) == TrainConfig()
    args = build_parser().parse_args(["--epochs", "3", "--no-aug", "--cache", "--threshold", "0.4",
                                      "--samples-per-epoch", "64", "--bands", "1,2,3"])
    assert config_from_args(args) == TrainConfig(epochs=3, augment=False, cache=True, threshold=0.4,
                                                 samples_per_epoch=64, bands="1,2,3")


def test_to_argv_gives_the_same_config():
    config = TrainConfig(epochs=3, augment=False, export=False, threshold=0.25, bands="seed", crop=128)
    assert config_from_args(build_parser().parse_args(config.to_argv())) == config
    assert TrainConfig().to_argv() == []


def test_config_json_round_trip_is_json_plain():
    config = TrainConfig(data="/tmp/x", epochs=7, threshold=0.3, pretrained="imagenet", bands=(0, 1, 2))
    text = json.dumps(config.to_dict())
    assert config.to_dict() == dataclasses.asdict(config)
    assert TrainConfig.from_dict(json.loads(text)) == config
    assert config.bands == "0,1,2"


def test_older_config_json_keeps_loading(tmp_path):
    """A config.json of the version before TrainConfig: no new fields, no_aug/no_export, run facts."""
    old = {"data": None, "epochs": 2, "batch_size": 2, "crop": 256, "lr": 0.001, "weight_decay": 0.0001,
           "alpha": 0.5, "bands": None, "val_fraction": 0.2, "seed": 0, "precision": "float32",
           "distribute": "none", "no_aug": True, "cache": False, "pretrained": None, "patience": 10,
           "workers": 1, "demo_tiles": 8, "demo_size": 64, "no_export": False, "bands_used": [1, 2, 3, 5, 9],
           "data_kind": "npy", "devices": 1, "keras_version": "3.x", "backend": "jax"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = TrainConfig.from_run(tmp_path)
    assert config.augment is False and config.export is True and config.bands == "seed"
    assert config.epochs == 2 and config.precision == "float32"
    assert config.threshold == "auto" and config.samples_per_epoch is None and config.task == "binary"
    assert TrainConfig.from_dict({**old, "bands": [0, 1, 2]}).bands == "0,1,2"


@pytest.mark.parametrize("changes, flag", [
    ({"epochs": 0}, "--epochs"), ({"crop": 100}, "--crop"), ({"alpha": 1.5}, "--alpha"),
    ({"val_fraction": 1.0}, "--val-fraction"), ({"lr": 0.0}, "--lr"), ({"samples_per_epoch": 0}, "--samples-per-epoch"),
    ({"threshold": 1.0}, "--threshold"), ({"threshold": "high"}, "--threshold"), ({"loss": "mse"}, "--loss"),
    ({"precision": "float64"}, "--precision"), ({"folds": 0}, "--folds"), ({"bands": " "}, "--bands"),
    ({"class_weights": "auto"}, "--class-weights"), ({"task": "multiclass", "threshold": 0.3}, "--threshold"),
    ({"aspp_rates": "2,4"}, "--aspp-rates"), ({"aspp_rates": "0,2,4"}, "--aspp-rates"),
    ({"aspp_rates": "two,4,6"}, "--aspp-rates"), ({"affine": 1.5}, "--affine"), ({"affine": -0.1}, "--affine"),
    ({"affine": "often"}, "--affine"), ({"encoder": "resnet50"}, "--encoder"),
    ({"refit_epochs": 0}, "--refit-epochs"), ({"refit_epochs": 2.5}, "--refit-epochs"),
    ({"refit_epochs": "longest"}, "--refit-epochs"), ({"refit_epochs": True}, "--refit-epochs"),
])
def test_bad_values_are_usage_errors_naming_the_flag(changes, flag):
    with pytest.raises(UsageError, match=flag):
        TrainConfig(**changes)


def test_affine_takes_auto_or_a_probability_and_older_runs_had_none():
    assert TrainConfig().affine == "auto" and TrainConfig(affine="AUTO").affine == "auto"
    assert TrainConfig(affine="0.25").affine == 0.25 and TrainConfig(affine=1).affine == 1.0
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--affine", "0.5"])).affine == 0.5
    assert config_from_args(parser.parse_args(["--affine", "auto"])).affine == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--affine", "often"])
    # A run saved before the option turned its crops by quarter turns only, and resumes that way.
    assert TrainConfig.from_dict({"epochs": 3}).affine == 0.0
    assert TrainConfig.from_dict(TrainConfig().to_dict()).affine == "auto"


def test_refit_epochs_is_auto_best_or_a_count_and_older_runs_refit_the_best_epoch():
    assert TrainConfig().refit_epochs == "auto" and TrainConfig(refit_epochs=" Best ").refit_epochs == "best"
    assert TrainConfig(refit_epochs="12").refit_epochs == 12 and TrainConfig(refit_epochs=3).refit_epochs == 3
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--refit-epochs", "best"])).refit_epochs == "best"
    assert config_from_args(parser.parse_args(["--refit-epochs", "20"])).refit_epochs == 20
    with pytest.raises(SystemExit):
        parser.parse_args(["--refit-epochs", "many"])
    # A refit saved before the option trained the validated run's best epoch count, and resumes that way.
    assert TrainConfig.from_dict({"epochs": 3, "refit": True}).refit_epochs == "best"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).refit_epochs == "auto"


def test_encoder_is_auto_or_a_name_and_older_runs_had_resnet34():
    assert TrainConfig().encoder == "auto"
    assert config_from_args(build_parser().parse_args(["--encoder", "resnet18"])).encoder == "resnet18"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--encoder", "resnet50"])
    assert TrainConfig.from_dict({"epochs": 3}).encoder == "resnet34"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).encoder == "auto"


def test_a_broken_saved_config_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": -1}))
    with pytest.raises(UsageError, match=r"config\.json: --epochs"):
        TrainConfig.from_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"config\.json: cannot read"):
        TrainConfig.from_run(tmp_path)


def test_resume_takes_the_saved_settings_and_refuses_other_flags(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(epochs=5, seed=3).to_dict()))
    args = build_parser().parse_args(["--out", str(tmp_path), "--resume", "--epochs", "9"])
    assert config_from_args(args) == TrainConfig(epochs=9, seed=3, out=str(tmp_path))
    args = build_parser().parse_args(["--out", str(tmp_path), "--resume", "--lr", "0.1", "--seed", "1"])
    with pytest.raises(UsageError, match="only --epochs, --workers may be given, not --lr, --seed"):
        config_from_args(args)


def test_one_error_hierarchy():
    from keras_glacier.data.errors import InputError as DataInputError

    assert DataInputError is InputError
    assert issubclass(InputError, GlacierError) and issubclass(UsageError, GlacierError)
    assert issubclass(GlacierError, ValueError)


def test_runner_reports_user_errors_in_one_line_and_lets_bugs_through(capsys):
    def failing(error):
        def main(argv):
            raise error
        return main

    assert cli.run(failing(InputError("a.tif: broken\n  header")), []) == 2
    assert capsys.readouterr().err == "error: a.tif: broken header\n"
    assert cli.run(lambda argv: None, []) == 0 and cli.run(lambda argv: 3, []) == 3
    with pytest.raises(KeyError):
        cli.run(failing(KeyError("bug")), [])
    with pytest.raises(ValueError):  # a plain ValueError is a bug, not the user's mistake
        cli.run(failing(ValueError("bug")), [])


def test_runner_maps_the_submission_and_conversion_errors(capsys):
    import solution
    from convert.export import ConversionInputError
    from convert.name_map import ConversionError

    for error, status in ((solution.InputError("x"), 2), (ConversionInputError("y"), 2), (ConversionError("z"), 1)):
        def main(argv, error=error):
            raise error
        assert cli.run(main, []) == status
        assert capsys.readouterr().err.startswith("error: ")


def test_runner_chooses_the_file_backend():
    import matplotlib

    cli.run(lambda argv: 0, [])
    assert matplotlib.get_backend().lower() == "agg"


def test_import_keras_glacier_loads_the_jobs_on_first_use():
    """The package import registers the model with Keras (it needs keras), but not torch or the jobs."""
    import subprocess
    import sys

    code = ("import sys, keras_glacier; "
            "before = ['torch' in sys.modules, 'keras_glacier.training.fit' in sys.modules]; "
            "c = keras_glacier.TrainConfig(epochs=2); print(*before, callable(keras_glacier.train))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False", "True"], done.stderr[-2000:]


def test_folds_hold_out_disjoint_scenes_that_cover_the_data(demo_npy_source):
    from keras_glacier.training.data import fold_split

    samples = demo_npy_source.samples  # 3 scenes
    held = [fold_split(samples, k, 3, seed=0)[1] for k in range(3)]
    scenes = [{s.scene_id for s in val} for val in held]
    assert all(len(s) == 1 for s in scenes) and set().union(*scenes) == {s.scene_id for s in samples}
    train, val = fold_split(samples, 1, 3, seed=0)
    assert {s.scene_id for s in train}.isdisjoint({s.scene_id for s in val}) and len(train) + len(val) == 12
    with pytest.raises(UsageError, match="--folds 4: the data has only 3 scenes"):
        fold_split(samples, 0, 4)


def test_a_resumed_run_keeps_its_settings(tmp_path):
    from keras_glacier.training.run_folder import check_resumed_config

    saved = TrainConfig(epochs=5, seed=3, out=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    check_resumed_config(tmp_path, saved.replace(epochs=9, workers=1))  # a larger budget is fine
    with pytest.raises(UsageError, match=r"--resume: .* other settings: --crop 128 \(saved 256\)"):
        check_resumed_config(tmp_path, saved.replace(crop=128))


def test_precision_auto_is_float32_on_cpu():
    from keras_glacier.training.fit import resolve_precision

    assert resolve_precision("auto") == "float32" and resolve_precision("mixed_float16") == "mixed_float16"


def test_cluster_flags_are_invocation_flags_and_a_plain_run_joins_nothing(monkeypatch):
    from keras_glacier.distribution import DEFAULT_TIMEOUT_S, initialize

    plain = build_parser().parse_args([])
    assert plain.coordinator is None and plain.coordinator_timeout == DEFAULT_TIMEOUT_S
    args = build_parser().parse_args(["--coordinator", "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1",
                                      "--coordinator-timeout", "30", "--epochs", "3"])
    assert (args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout) == (
        "10.0.0.1:1234", 2, 1, 30.0)
    assert config_from_args(args) == TrainConfig(epochs=3)  # not settings: every process has its own id
    # What run_job calls on every plain run: no flag, no KERAS_DISTRIBUTION_*, no cluster -> one process.
    for name in [k for k in os.environ if k.startswith(("KERAS_DISTRIBUTION_", "SLURM_"))]:
        monkeypatch.delenv(name)
    info = initialize()
    assert (info.how, info.process_count, info.process_index) == ("single", 1, 0)


def test_distribution_errors_are_usage_errors_reported_in_one_line(capsys):
    from keras_glacier.distribution import DistributionError, check_global_batch

    assert issubclass(DistributionError, UsageError)

    def job(argv):
        check_global_batch(6, num_devices=4, num_processes=2)

    assert cli.run(job, []) == 2
    assert capsys.readouterr().err == "error: global batch size 6 is not a multiple of the 4 devices (2 processes): " \
                                      "use e.g. 4 or 8\n"
