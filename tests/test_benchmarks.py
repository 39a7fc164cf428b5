"""The benchmarks still run end to end and write every table (figures themselves are never asserted)."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import accuracy, inference, run_all, train_step
from benchmarks.common import markdown_table
from keras_glacier.losses import BceDiceLoss

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_every_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "_Failed" not in text and "_Not run" not in text, text
    sections = text.split("\n## ")
    titles = [section.splitlines()[0] for section in sections[1:]]
    assert titles == [run_all.TITLES[name] for name in ("machine", *run_all.SECTIONS)]
    for section in sections[1:]:
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert len(table) >= 3, f"no table in section {section.splitlines()[0]!r}"
    train = sections[2]
    for column in ("keras_s", "torch_nchw_s", "keras/torch_nchw", "keras/torch_channels_last", "compile_s"):
        assert column in train
    assert "own process each" in train
    # Quick: ResNet-18 everywhere, and the allocator's rerun times every contender alternating in one
    # process (train_step's in-process path, the alternative to the isolated default above).
    reuse = sections[3]
    assert "alternating in one process" in reuse and "resnet18" in train and "resnet18" in reuse
    for column in ("keras_s", "torch_nchw_s", "torch_channels_last_s", "page_faults_keras/torch"):
        assert column in reuse
    infer = sections[4]
    for contender in ("torch batched", "torch submission default", "torch naive (1 view/pass)", inference.KERAS):
        assert f"| {contender} | off |" in infer and f"| {contender} | 4 flips |" in infer
    assert "python -m benchmarks --quick" in text
    for key in ("cpu", "cores", "memory", "jax", "keras", "torch", "jax device", "allocator"):
        assert f"| {key} |" in sections[1]


@pytest.mark.parametrize("module", [train_step, inference, run_all, accuracy])
def test_every_cli_has_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_torch_loss_in_the_benchmark_is_the_keras_loss():
    logits = np.random.default_rng(0).normal(scale=4.0, size=(2, 16, 16, 1)).astype("float32")
    _, labels = train_step.make_batch(2, 16)
    assert {0.0, 1.0, 255.0} <= set(np.unique(labels))
    keras_value = float(BceDiceLoss()(labels, logits))
    torch_value = float(train_step.torch_bce_dice(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert torch_value == pytest.approx(keras_value, rel=1e-5)


def test_settings_parser_and_table_writer():
    assert train_step.parse_setting("4x256") == (4, 256)
    for bad in ("4x250", "x256", "0x256"):
        with pytest.raises(argparse.ArgumentTypeError):
            train_step.parse_setting(bad)
    table = markdown_table([{"a": 1.23456, "b": "x"}, {"a": 20.0, "c": None}])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.23 | x |  |", "| 20.0 |  |  |"]


def test_accuracy_folds_baselines_and_section(tmp_path):
    from keras_glacier.data.demo import make_demo_band_folders

    data = make_demo_band_folders(tmp_path / "rows", tiles=4, size=32, seed=0, scenes=2)
    assert accuracy.row_folds(data) == ["00", "01"]
    _, train, val = accuracy.fold_samples(data, "01")
    assert {s.scene_id for s in val} == {"01"} and {s.scene_id for s in train} == {"00"}
    x, y = accuracy.pixels(val, (0, 1, 2, 3, 4))
    assert x.shape == (y.size, 5) and 1000 < y.size <= 2 * 32 * 32 and set(np.unique(y)) == {0, 1}
    assert np.isfinite(x).all()
    baselines = accuracy.pixel_baselines(data, "01")
    assert set(baselines) == {"LR", "GB"}
    # The synthetic bands tell ice apart: both baselines find it on the held-out row (chance is MCC 0).
    assert all(0.2 < b["mcc"] <= 1.0 and 0.0 < b["iou"] <= 1.0 for b in baselines.values()), baselines
    assert accuracy.scores([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx({"mcc": 1 / np.sqrt(3), "iou": 0.5})
    assert accuracy.training_settings("--crop 128 --lr 3e-4") == {"crop": 128, "lr": 3e-4}

    rows = [{"variant": "default", "seed": 0, "fold": f, "val": s, "MCC@t": m, "wall s": 1.0}
            for f, s, m in ((0, "00", 0.5), (1, "01", 0.7))]
    assert accuracy.mean_rows(rows)[0]["MCC@t"] == pytest.approx(0.6)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\n## Machine\n\nm\n\n## Accuracy on everest-west\n\nold\n\n## Parity\n\np\n")
    accuracy.write_section(out, "before", "table 1")
    accuracy.write_section(out, "after", "table 2")
    accuracy.write_section(out, "before", "table 3")
    text = out.read_text()
    assert text.count("## Accuracy on everest-west") == 1 and "## Machine\n\nm" in text and "## Parity\n\np" in text
    assert "### before\n\ntable 3" in text and "### after\n\ntable 2" in text and "table 1" not in text


def test_accuracy_ensemble_row_averages_the_seeds_probabilities():
    """Two seeds that each get one half of the glacier wrong agree on the truth once averaged."""
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 255], dtype=np.uint8)
    a = np.array([0.9, 0.9, 0.4, 0.4, 0.1, 0.1, 0.6, 0.6, 0.9], dtype=np.float32)
    b = np.array([0.4, 0.4, 0.9, 0.9, 0.6, 0.6, 0.1, 0.1, 0.0], dtype=np.float32)
    single = accuracy.probability_scores(a, truth, 0.5)
    assert single["MCC@0.5"] == pytest.approx(0.0)
    row = accuracy.ensemble_row("default", 2, "02", [(0, a, truth, 100.0), (1, b, truth, 50.0)])
    assert row["variant"] == "default ensemble" and row["seed"] == "0+1" and row["wall s"] == 150.0
    assert row["MCC@t"] == pytest.approx(1.0) and row["IoU@t"] == pytest.approx(1.0) and 0.35 < row["t"] < 0.65
    with pytest.raises(ValueError, match="different held-out pixels"):
        accuracy.ensemble_row("default", 2, "02", [(0, a, truth, 1.0), (1, b, truth[::-1].copy(), 1.0)])


def test_accuracy_scores_a_kept_run_again_and_refuses_one_trained_otherwise(tmp_path):
    rng = np.random.default_rng(0)
    prob, truth = rng.random((2, 8, 8)).astype("float32"), (rng.random((2, 8, 8)) > 0.5).astype("uint8")
    settings = {**accuracy.training_settings("--lr 3e-4"), **accuracy.training_settings(accuracy.VARIANTS["crop128"])}
    row = {"variant": "crop128", "seed": 1, "val": "02", "MCC@t": 0.25}
    accuracy.save_result(tmp_path / "crop128-seed1-02", settings, row, prob, truth)
    # No data folder exists: reaching the training would fail, so the result must come from the files.
    missing = tmp_path / "no-data"
    got_row, (got_prob, got_truth) = accuracy.run_fold(missing, "02", "crop128", 1, {"lr": 3e-4}, tmp_path)
    assert got_row == {**row, "scored": "02"}  # a row kept before the "scored" column: its validation row
    np.testing.assert_array_equal(got_prob, prob)
    np.testing.assert_array_equal(got_truth, truth)
    with pytest.raises(SystemExit, match="crop128-seed1-02 was trained with .*give another --runs-dir"):
        accuracy.run_fold(missing, "02", "crop128", 1, {"lr": 1e-3}, tmp_path)


def test_rewriting_the_report_keeps_the_accuracy_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    assert run_all.kept_sections(out) == ""
    section = "## Accuracy on everest-west\n\nintro\n\n### before\n\nt\n"
    out.write_text(f"# old\n\n## Machine\n\nm\n\n{section}\n## Data loader\n\nx\n")
    assert run_all.kept_sections(out) == "\n" + section
    assert accuracy.SECTION in run_all.KEPT_SECTIONS


def test_accuracy_history_facts_of_a_run_and_of_a_members_run(tmp_path):
    def history(folder: Path, val_mcc: list[str]) -> Path:
        folder.mkdir(parents=True)
        rows = [f"{epoch},0.5,{mcc}" for epoch, mcc in enumerate(val_mcc)]
        (folder / "history.csv").write_text("\n".join(["epoch,loss,val_mcc", *rows]) + "\n")
        return folder

    single = history(tmp_path / "single", ["0.2", "0.6", "nan", "0.5"])
    assert accuracy.history_facts(single) == (4, 2)
    assert accuracy.history_facts(tmp_path / "never-trained") == ("", "")
    history(tmp_path / "pair" / "member-1", ["0.1", "0.3", "0.2"])
    history(tmp_path / "pair" / "member-2", ["0.4", "0.1"])
    assert accuracy.history_facts(tmp_path / "pair") == ("3+2", "2+1")
    refit = history(tmp_path / "refit", ["", ""])  # a --refit run's own history validates nothing
    history(refit / "validation-run", ["0.1", "0.4", "0.2"])
    assert accuracy.history_facts(refit) == (3, 2)
    # --members 2 --refit: the members' validated runs chose their epochs (validation-run is an ensemble).
    (tmp_path / "refit-pair" / "validation-run").mkdir(parents=True)
    for index, val_mcc in ((1, ["0.3", "0.1"]), (2, ["0.1", "0.2", "0.5", "0.4"])):
        history(tmp_path / "refit-pair" / f"member-{index}", ["", ""])
        history(tmp_path / "refit-pair" / f"member-{index}" / "validation-run", val_mcc)
    assert accuracy.history_facts(tmp_path / "refit-pair") == ("2+4", "1+3")
    assert accuracy.history_facts(history(tmp_path / "blind", ["", "", ""])) == (3, ""), "--val-fraction 0: no best"


def test_accuracy_test_protocol_views_the_data_without_the_held_out_row(tmp_path):
    from keras_glacier.data.demo import make_demo_band_folders
    from keras_glacier.data.sources import discover, read_sample

    data = make_demo_band_folders(tmp_path / "rows", tiles=6, size=32, seed=0, scenes=3)
    assert accuracy.validation_scene(["00", "01", "02"], "01") == "02"
    assert accuracy.validation_scene(["00", "01", "02"], "02") == "00"
    with pytest.raises(SystemExit, match="needs at least 3 scenes"):
        accuracy.validation_scene(["00", "01"], "00")
    view = accuracy.data_without(data, "01", tmp_path / "view")
    seen = {s.sample_id: s for s in discover(view).samples}
    whole = {s.sample_id: s for s in discover(data).samples}
    assert {s.scene_id for s in seen.values()} == {"00", "02"}
    assert set(seen) == {i for i, s in whole.items() if s.scene_id != "01"}
    for sample_id, sample in seen.items():
        assert all(Path(p).is_symlink() for p in (*sample.image_paths, sample.label_path))
        for got, want in zip(read_sample(sample, (0, 1, 2, 3, 4)), read_sample(whole[sample_id], (0, 1, 2, 3, 4))):
            np.testing.assert_array_equal(got, want)
    assert accuracy.data_without(data, "00", tmp_path / "view") == tmp_path / "view"  # remade, not added to
    assert {s.scene_id for s in discover(view).samples} == {"01", "02"}
    nested = accuracy.data_without(view, "02", tmp_path / "nested")  # a dataset of links is viewed too
    assert {s.scene_id for s in discover(nested).samples} == {"01"}


def test_accuracy_ensemble_threshold_is_chosen_on_the_validation_row():
    """Under the test protocol the held-out row scores the ensemble but never picks its threshold."""
    from keras_glacier.metrics.threshold import best_threshold

    rng = np.random.default_rng(1)
    truth = (rng.random(400) > 0.6).astype(np.uint8)
    held = [np.clip(truth * 0.5 + rng.random(400) * 0.5, 0, 1).astype(np.float32) for _ in range(2)]
    val_truth = (rng.random(300) > 0.5).astype(np.uint8)
    val = [np.clip(val_truth * 0.3 + 0.5 + rng.normal(0, 0.1, 300), 0, 1).astype(np.float32) for _ in range(2)]
    members = [(seed, held[seed], truth, 10.0, val[seed], val_truth) for seed in (0, 1)]
    row = accuracy.ensemble_row("default", 1, "01", members, "02")
    want, _ = best_threshold(val_truth, np.mean(val, axis=0))
    held_best, _ = best_threshold(truth, np.mean(held, axis=0))
    assert abs(want - held_best) > 0.05  # the two rows disagree, so the test tells which one chose
    assert row["t"] == pytest.approx(float(want)) and row["scored"] == "01" and row["val"] == "02"
    scored = accuracy.probability_scores(np.mean(held, axis=0), truth, float(want))
    assert row["MCC@t"] == pytest.approx(scored["MCC@t"])
    with pytest.raises(ValueError, match="different validation pixels"):
        accuracy.ensemble_row("default", 1, "01", [members[0], (*members[1][:5], val_truth[::-1].copy())], "02")
    # Refitted networks (and a --threshold given) decide at a fixed threshold, as train --members N does.
    fixed = accuracy.ensemble_row("default", 1, "01", members, "02",
                                  threshold=accuracy.ensemble_threshold(accuracy.training_settings("--refit")))
    assert fixed["t"] == 0.5 and fixed["MCC@t"] == pytest.approx(fixed["MCC@0.5"])
    assert accuracy.ensemble_threshold(accuracy.training_settings("--refit --threshold 0.3")) == 0.3
    assert accuracy.ensemble_threshold(accuracy.training_settings("--crop 128")) is None
    assert accuracy.ensemble_threshold(accuracy.training_settings("--val-fraction 0")) == 0.5


def test_accuracy_test_protocol_trains_without_the_held_out_row_and_scores_it(tmp_path):
    """The real training job on tiny data: the run never sees the test row, which it is scored on."""
    from keras_glacier.data.demo import make_demo_band_folders
    from keras_glacier.data.sources import discover, read_sample

    data = make_demo_band_folders(tmp_path / "rows", tiles=6, size=32, seed=0, scenes=3)
    settings = {"epochs": 1, "batch_size": 2, "workers": 1, "samples_per_epoch": 4}
    with pytest.raises(ValueError, match="another row than the held-out 01"):
        accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs", val_scene="01")
    row, maps = accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs",
                                  val_scene="02")
    run_dir = tmp_path / "runs" / "default-seed0-test01-val02"
    split = json.loads((run_dir / "split.json").read_text())
    test_ids = {s.sample_id for s in discover(data).samples if s.scene_id == "01"}
    assert split["train_scenes"] == ["00"] and split["val_scenes"] == ["02"]
    assert not test_ids & {*split["train"], *split["val"]}  # not even among the statistics' tiles
    assert row["scored"] == "01" and row["val"] == "02" and len(maps) == 4
    samples = discover(data).samples
    for (prob, truth), scene in ((maps[:2], "01"), (maps[2:], "02")):
        labels = np.concatenate([read_sample(s, (0,))[1].ravel() for s in samples if s.scene_id == scene])
        np.testing.assert_array_equal(truth, labels)
        assert prob.shape == truth.shape and np.all((prob >= 0) & (prob <= 1))
    assert row["MCC@t"] == pytest.approx(accuracy.probability_scores(maps[0], maps[1], row["t"])["MCC@t"])
    again, kept = accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs",
                                    val_scene="02")
    assert again == row and all(np.array_equal(a, b) for a, b in zip(kept, maps))


def test_accuracy_scores_a_refit_network_on_the_test_row_and_its_validated_run_on_the_validation_row(tmp_path):
    """--refit: the refitted network has seen the validation row, so that row's maps are the validated run's."""
    import keras

    from keras_glacier.data.demo import make_demo_band_folders
    from keras_glacier.data.sources import discover
    from keras_glacier.inference import keras_forward
    from keras_glacier.training.config import TrainConfig
    from keras_glacier.training.data import make_datasets, prepare_data
    from keras_glacier.training.threshold import validation_probabilities

    data = make_demo_band_folders(tmp_path / "rows", tiles=6, size=32, seed=0, scenes=3)
    settings = {"epochs": 1, "batch_size": 2, "workers": 1, "samples_per_epoch": 4, "refit": True}
    row, maps = accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs", val_scene="02")
    run_dir = tmp_path / "runs" / "default-seed0-test01-val02"
    validated = run_dir / "validation-run"
    assert json.loads((run_dir / "split.json").read_text())["train_scenes"] == ["00", "02"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (row["epochs"], row["best"]) == (1, 1) and row["t"] == metrics["threshold"] == 0.5
    assert metrics["validated_threshold"] == json.loads((validated / "metrics.json").read_text())["threshold"]
    val_maps = accuracy.held_out_probabilities(validated, TrainConfig.from_run(validated))
    assert all(np.array_equal(a, b) for a, b in zip(maps[2:], val_maps))
    # The test row is scored by the refitted network (with its own statistics), not by the validated one.
    test = [s for s in discover(data).samples if s.scene_id == "01"]
    config = TrainConfig.from_run(validated)
    _, bands, _, train, _, stats, _ = prepare_data(config, validated, resume=True)
    _, seq = make_datasets(config, validated, train, test, stats, bands)
    first = validation_probabilities(keras_forward(keras.saving.load_model(validated / "model.keras")), seq)
    np.testing.assert_array_equal(first[1], maps[1])
    assert not np.allclose(first[0], maps[0])


def test_accuracy_without_validation_trains_on_every_other_row_and_scores_the_test_row(tmp_path):
    """--val-fraction 0: both other rows train, none validates, the held-out row is scored at 0.5."""
    from keras_glacier.data.demo import make_demo_band_folders
    from keras_glacier.data.sources import discover, read_sample

    data = make_demo_band_folders(tmp_path / "rows", tiles=6, size=32, seed=0, scenes=3)
    settings = {"epochs": 1, "batch_size": 2, "workers": 1, "samples_per_epoch": 4, "val_fraction": 0.0}
    with pytest.raises(ValueError, match="use the test protocol"):
        accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs")
    row, maps = accuracy.run_fold(data, "01", "default", 0, settings, tmp_path / "runs", val_scene="02")
    run_dir = tmp_path / "runs" / "default-seed0-test01-valnone"
    split = json.loads((run_dir / "split.json").read_text())
    assert split["train_scenes"] == ["00", "02"] and split["val"] == []
    assert (row["val"], row["t"], row["epochs"], row["best"]) == ("none", 0.5, 1, "") and len(maps) == 2
    labels = np.concatenate([read_sample(s, (0,))[1].ravel() for s in discover(data).samples if s.scene_id == "01"])
    np.testing.assert_array_equal(maps[1], labels)
    assert row["MCC@t"] == pytest.approx(row["MCC@0.5"])


def kept_member(runs_dir, seed, scored, extra_args, prob, truth, *val_maps):
    """A finished benchmarks.accuracy run, as its --runs-dir keeps it."""
    settings = accuracy.training_settings(extra_args)
    row = {"variant": "default", "seed": seed, "scored": scored, "val": "none", "epochs": 45, "best": "",
           "wall s": 100.0, **accuracy.probability_scores(prob, truth, 0.5)}
    accuracy.save_result(runs_dir / f"default-seed{seed}-test{scored}-valnone", settings, row, prob, truth, *val_maps)


def ensemble_rows(output):
    """{(variant, fold): MCC@t} of the table benchmarks.ensemble printed."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in output.splitlines() if line.startswith("| ")]
    header = cells[0]
    return {(r[header.index("variant")], r[header.index("fold")]): float(r[header.index("MCC@t")]) for r in cells[1:]}


def test_ensemble_of_kept_runs_from_two_commands_averages_their_probabilities(tmp_path, capsys):
    """Two runs kept by different commands, each wrong on half the glacier, score 1.0 once averaged."""
    from benchmarks import ensemble

    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 255], dtype=np.uint8)
    a = np.array([0.9, 0.9, 0.4, 0.4, 0.1, 0.1, 0.6, 0.6, 0.9], dtype=np.float32)
    b = np.array([0.4, 0.4, 0.9, 0.9, 0.6, 0.6, 0.1, 0.1, 0.0], dtype=np.float32)
    for scored in ("00", "01"):
        kept_member(tmp_path / "bce", 0, scored, "--val-fraction 0", a, truth)
        kept_member(tmp_path / "focal", 3, scored, "--val-fraction 0 --loss focal", b, truth)
    assert ensemble.main([f"{tmp_path / 'bce'}:0", f"{tmp_path / 'focal'}:3"]) == 0
    rows = ensemble_rows(capsys.readouterr().out)
    for fold in ("0", "1"):
        assert rows[("bce:0", fold)] == pytest.approx(0.0) and rows[("focal:3", fold)] == pytest.approx(0.0)
        assert rows[("bce:0+focal:3 ensemble", fold)] == pytest.approx(1.0)
    assert rows[("bce:0+focal:3 ensemble", "mean")] == pytest.approx(1.0)


def test_ensemble_refuses_members_it_cannot_average(tmp_path, capsys):
    from benchmarks import ensemble

    truth = np.array([1, 0, 1, 0], dtype=np.uint8)
    prob = np.array([0.8, 0.2, 0.6, 0.4], dtype=np.float32)
    kept_member(tmp_path / "a", 0, "00", "--val-fraction 0", prob, truth)
    kept_member(tmp_path / "a", 0, "01", "--val-fraction 0", prob, truth)
    kept_member(tmp_path / "b", 0, "00", "--val-fraction 0", prob, truth)
    with pytest.raises(SystemExit, match=r"b:0 scored rows 00, a:0 rows 00, 01: members must hold out the same rows"):
        ensemble.main([f"{tmp_path / 'a'}:0", f"{tmp_path / 'b'}:0"])
    with pytest.raises(SystemExit, match=r"holds no finished default run of seed 5"):
        ensemble.main([f"{tmp_path / 'a'}:0", f"{tmp_path / 'b'}:5"])
    # A validated run chooses its threshold on its validation row; one without validation decides at
    # 0.5; with no validation row kept by the second, nothing can choose one for both.
    kept_member(tmp_path / "c", 0, "00", "--crop 128", prob, truth)
    with pytest.raises(SystemExit, match=r"row 00: the members decide at different thresholds"):
        ensemble.main([f"{tmp_path / 'b'}:0", f"{tmp_path / 'c'}:0"])
    kept_member(tmp_path / "d", 0, "00", "--val-fraction 0", prob, truth[::-1].copy())
    with pytest.raises(SystemExit, match=r"error: fold 0: ensemble members were scored on different held-out pixels"):
        ensemble.main([f"{tmp_path / 'b'}:0", f"{tmp_path / 'd'}:0"])
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([f"{tmp_path / 'b'}"])
    assert exit_info.value.code == 2 and "give a member as RUNS_DIR:SEED" in capsys.readouterr().err
