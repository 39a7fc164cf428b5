"""The benchmarks still run end to end and write every table (figures themselves are never asserted)."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import inference, run_all, train_step
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
    infer = sections[4]
    for contender in ("torch batched", "torch submission default", "torch naive (1 view/pass)", inference.KERAS):
        assert f"| {contender} | off |" in infer and f"| {contender} | 4 flips |" in infer
    assert "python -m benchmarks --quick" in text
    for key in ("cpu", "cores", "memory", "jax", "keras", "torch", "jax device", "allocator"):
        assert f"| {key} |" in sections[1]


@pytest.mark.parametrize("module", [train_step, inference, run_all])
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


def test_same_process_timing_runs_every_contender():
    """The in-process alternative to the isolated default (the quick run above covers the isolated path)."""
    rows = train_step.run(((2, 32),), steps=1, warmup=0, flops=False, isolate=False)
    (row,) = rows
    assert row["timing"] == "alternating in one process"
    for column in ("keras_s", "torch_nchw_s", "torch_channels_last_s", "keras/torch_nchw", "page_faults_keras/torch"):
        assert column in row
    assert row["keras_s"] > 0 and row["torch_nchw_s"] > 0
