"""The real training job (``python -m keras_glacier.train``) over two processes on localhost, and over
two devices of one process (``--distribute data_parallel``): both train, process 0 alone writes the run.

The two processes run in different working folders with the same relative ``--out``, as two hosts
without a shared file system would: process 1 makes its own copy of the demo data there (same seed,
same tiles; checked) and must write nothing else, so any run file it wrote would be found.
"""

from __future__ import annotations

import csv
import json
import math
import time

import pytest

from keras_glacier.training.run_folder import RUN_FILES
from tests.distribution.processes import free_port, start_module, wait_all

TINY = ["--demo-tiles", "8", "--demo-size", "32", "--batch-size", "4", "--epochs", "1", "--samples-per-epoch", "8",
        "--workers", "1", "--no-export", "--malloc", "default"]
JOB_TIMEOUT_S = 480  # three jobs compiling the model at once on a small machine; a hang is killed, not waited on
COMPLETE = ("model.keras", "best.keras", "metrics.json", "history.csv", "config.json", "run.json", "split.json",
            "stats.json", "curves.png", "predictions.png")


def start_train(args, devices, log, cwd, **popen):
    return start_module("keras_glacier.train", [*TINY, *args], devices, log, cwd=cwd, **popen)


@pytest.fixture(scope="module")
def jobs(module_tmp):
    """A job of 2 processes x 2 devices and a 1-process job of 2 devices, run side by side."""
    base = module_tmp("distributed_job")
    hosts = [base / f"host{i}" for i in range(2)]
    single = base / "single"
    for folder in (*hosts, single):
        folder.mkdir()
    address = f"127.0.0.1:{free_port()}"
    logs = [host / "log.txt" for host in hosts] + [single / "log.txt"]
    started = time.monotonic()
    procs = [start_train(["--out", "run", "--coordinator", address, "--num-processes", "2", "--process-id", str(i),
                          "--coordinator-timeout", "120"], 2, logs[i], hosts[i]) for i in range(2)]
    procs.append(start_train(["--out", str(single / "run"), "--distribute", "data_parallel"], 2, logs[2], single))
    wait_all(procs, logs, JOB_TIMEOUT_S)
    return hosts, single, time.monotonic() - started


def read(folder, name):
    return json.loads((folder / name).read_text())


def history(run):
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def check_complete_run(run):
    for name in COMPLETE:
        assert (run / name).is_file(), name
    assert not (run / "backup").exists(), "a finished run keeps no resume backup"
    metrics = read(run, "metrics.json")
    assert math.isfinite(metrics["mcc"]) and -1.0 <= metrics["mcc"] <= 1.0, metrics
    assert 0 < metrics["threshold"] < 1 and math.isfinite(metrics["threshold_mcc"])
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [0] and math.isfinite(float(rows[0]["val_mcc"]))
    split = read(run, "split.json")
    assert split["train_scenes"] and split["val_scenes"]
    return metrics


def test_two_processes_train_and_process_0_alone_writes_the_run(jobs):
    hosts, _, _ = jobs
    run0, run1 = hosts[0] / "run", hosts[1] / "run"
    check_complete_run(run0)
    facts = read(run0, "run.json")
    assert (facts["processes"], facts["devices"]) == (2, 4)
    assert read(run0, "config.json")["out"] == "run"
    # Process 1 made its own copy of the demo data (it cannot see process 0's folder) and nothing else.
    assert sorted(p.name for p in run1.iterdir()) == ["demo_data"]
    assert not any((run1 / name).exists() for name in RUN_FILES)


def test_one_process_data_parallel_trains_through_the_same_path(jobs):
    hosts, single, _ = jobs
    run = single / "run"
    check_complete_run(run)
    facts = read(run, "run.json")
    assert facts["devices"] == 2 and "processes" not in facts
    # Same data, seed and global batch: the 2-process job computed the same steps (up to the order of
    # the sums over 4 devices instead of 2), so its losses agree; another share or a per-process
    # validation set would not.
    one, two = history(run)[0], history(hosts[0] / "run")[0]
    for key in ("loss", "val_loss", "val_r2"):
        assert float(two[key]) == pytest.approx(float(one[key]), rel=5e-3), key


def test_a_global_batch_the_devices_cannot_split_is_refused_on_every_process(tmp_path):
    """--batch-size 6 over 2 processes x 2 devices: one line with the numbers, exit 2, before any training."""
    address = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    outs = [tmp_path / f"out{i}.txt" for i in range(2)]
    procs = []
    for i in range(2):
        # stdout apart from stderr: Gloo's connection report ("[Gloo] Rank 0 is connected to 1 peer ranks.
        # ...") is written to stdout by the C++ runtime through its own buffer, and in one shared file it
        # was once spliced into the middle of our line on a loaded machine.
        with outs[i].open("w") as out:
            procs.append(start_train(["--out", str(tmp_path / "run"), "--batch-size", "6", "--coordinator", address,
                                      "--num-processes", "2", "--process-id", str(i), "--coordinator-timeout", "60"],
                                     2, logs[i], tmp_path, stdout=out))
    wait_all(procs, logs, 180, expect=2)
    for log, out in zip(logs, outs):
        assert log.read_text().splitlines() == [
            "error: global batch size 6 is not a multiple of the 4 devices (2 processes): use e.g. 4 or 8"]
        # Only Gloo's report on stdout (it was once broken over two lines: both pieces are its, not ours).
        assert all(line.startswith("[Gloo]") or "peer ranks" in line
                   for line in out.read_text().splitlines()), out.read_text()
    assert not (tmp_path / "run" / "config.json").exists()
