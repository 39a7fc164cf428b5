"""Multi-process data parallelism (keras_glacier.distribution): the real model trained by two jax
processes on localhost (gloo CPU collectives, two virtual devices each) must match one process with
four devices; plus the set-up errors a user meets first and the batch-share arithmetic."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keras_glacier.distribution import (
    ENV_ADDRESSES,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    PAD,
    DistributionError,
    check_global_batch,
    initialize,
    parse_address,
    process_batch_indices,
)

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 420  # the whole multi-process comparison, compile included; a hang is killed, not waited on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_DISTRIBUTION_", "SLURM_", "JAX_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", KERAS_BACKEND="jax",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    return env


def start(args: list[str], devices: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.distribution.worker", *args], cwd=ROOT,
                            env=worker_env(devices), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout_s: float) -> None:
    """Waits for every process; on a timeout or a failure kills them all (their whole process groups)."""
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    failed = [(log, proc.returncode) for proc, log in zip(procs, logs) if proc.returncode != 0]
    if failed:
        log, code = failed[0]
        pytest.fail(f"{log.name} exited with {code}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 1-process x 4-device run and one 2-process x 2-device run, side by side, same data and seed."""
    from keras_glacier.data import make_demo_dataset

    base = tmp_path_factory.mktemp("distributed")
    data = make_demo_dataset(base / "data", scenes=4, tiles_per_scene=4, size=32, seed=0)
    single, multi = base / "single", base / "multi"
    single.mkdir()
    multi.mkdir()
    common = ["--data", str(data), "--timeout", "120"]
    address = f"127.0.0.1:{free_port()}"
    procs, logs = [], []
    for i in range(2):
        logs.append(multi / f"log{i}.txt")
        procs.append(start([*common, "--out", str(multi), "--coordinator", address, "--num-processes", "2",
                            "--process-id", str(i)], 2, logs[-1]))
    logs.append(single / "log.txt")
    procs.append(start([*common, "--out", str(single)], 4, logs[-1]))
    started = time.monotonic()
    wait_all(procs, logs, RUN_TIMEOUT_S)
    return single, multi, time.monotonic() - started


def load(folder: Path, index: int):
    weights = np.load(folder / f"process_{index}.npz")
    meta = json.loads((folder / f"process_{index}.json").read_text())
    return [weights[k] for k in weights.files], meta


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
    single, multi, _ = runs
    w1, m1 = load(single, 0)
    w2a, m2a = load(multi, 0)
    w2b, m2b = load(multi, 1)
    assert (m1["process_count"], m1["devices"], m1["local_devices"]) == (1, 4, 4)
    assert (m2a["process_count"], m2a["devices"], m2a["local_devices"]) == (2, 4, 2)
    assert m2a["how"] == "explicit" and m1["how"] == "single"
    # The replicas of one job hold bitwise the same weights and report the same metrics.
    assert all(np.array_equal(a, b) for a, b in zip(w2a, w2b))
    assert m2a["logs"] == m2b["logs"]
    # ... and they equal the single-process run's, up to summation order in the all-reduces.
    assert m1["moved"] > 1e-3 and m2a["moved"] > 1e-3  # training changed the weights
    for a, b in zip(w1, w2a):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert set(m1["logs"]) == set(m2a["logs"]) and "val_mcc" in m1["logs"]
    for key, value in m1["logs"].items():
        assert m2a["logs"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_unreachable_coordinator_fails_in_time_with_one_line_naming_it(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.distribution.worker", "--data", str(tmp_path), "--out", str(tmp_path),
         "--coordinator", address, "--num-processes", "2", "--process-id", "1", "--timeout", "2"],
        cwd=ROOT, env=worker_env(1), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "within 2 s" in lines[0], proc.stderr[-2000:]
    assert elapsed < 60  # 2 s of probing plus an interpreter start, not jax's 300 s default


def test_explicit_settings_are_checked_before_anything_starts(monkeypatch):
    for name in (ENV_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributionError, match="missing --process-id"):
        initialize("127.0.0.1:1234", 2, None)
    with pytest.raises(DistributionError, match="not HOST:PORT"):
        initialize("127.0.0.1", 2, 0)
    with pytest.raises(DistributionError, match=r"--process-id 2 must be in 0\.\.1"):
        initialize("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "two")
    with pytest.raises(DistributionError, match="KERAS_DISTRIBUTION_NUM_PROCESSES='two'"):
        initialize()
    assert parse_address("10.0.0.1:1234,10.0.0.2:2345") == ("10.0.0.1", 1234)
    assert parse_address("[::1]:80") == ("::1", 80)


def test_non_divisible_global_batch_is_refused_with_the_numbers():
    with pytest.raises(DistributionError, match=r"global batch size 6 is not a multiple of the 4 devices "
                                                r"\(2 processes\): use e\.g\. 4 or 8"):
        check_global_batch(6, num_devices=4, num_processes=2)
    with pytest.raises(DistributionError, match="global batch size 2 .* 8 devices"):
        check_global_batch(2, num_devices=8, num_processes=1)
    assert check_global_batch(8, num_devices=4, num_processes=2) == 4
    assert check_global_batch(3, num_devices=1, num_processes=1) == 3


@pytest.mark.parametrize(("samples", "global_batch", "processes", "devices"),
                         [(10, 4, 2, 4), (13, 6, 3, 6), (7, 8, 2, 4)])
def test_process_shares_cover_each_batch_once_in_single_process_order(samples, global_batch, processes, devices):
    order = np.random.default_rng(5).permutation(samples)
    batches = -(-samples // global_batch)
    seen = []
    for b in range(batches):
        shares = [process_batch_indices(order, b, global_batch, p, processes, devices) for p in range(processes)]
        assert len({s.size for s in shares}) == 1 and shares[0].size % (devices // processes) == 0
        joined = np.concatenate(shares)
        real = joined[joined != PAD]
        # What one process would put in this batch, in the same order; padding only after it.
        np.testing.assert_array_equal(real, order[b * global_batch : (b + 1) * global_batch])
        assert np.all(joined[real.size :] == PAD) and joined.size % devices == 0
        seen.extend(real.tolist())
    assert sorted(seen) == list(range(samples))  # every tile once per epoch, none twice


def test_process_shard_serves_its_rows_of_the_loaders_batches(demo_npy_source, demo_stats):
    from keras_glacier.constants import IGNORE_INDEX
    from keras_glacier.data.dataset import GlacierSequence
    from keras_glacier.distribution import ProcessShard

    samples = demo_npy_source.samples[:6]  # 6 tiles, global batch 4: a full batch and a short one
    sequence = GlacierSequence(samples, demo_stats, demo_npy_source.default_bands, batch_size=4, shuffle=True,
                               seed=1, workers=1, drop_remainder=False)
    shards = [ProcessShard(sequence, process_index=p, process_count=2, num_devices=4) for p in range(2)]
    sequence.set_epoch(2)
    full_x, full_y = sequence[0]
    parts = [shard[0] for shard in shards]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full_x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), full_y)
    short_x, short_y = sequence[1]  # 2 tiles for 4 devices: process 1's two rows are padding
    (x0, y0), (x1, y1) = shards[0][1], shards[1][1]
    np.testing.assert_array_equal(x0, short_x)
    np.testing.assert_array_equal(y0, short_y)
    assert x1.shape == x0.shape and np.isnan(x1).all() and (y1 == IGNORE_INDEX).all()
    shards[0].on_epoch_end()  # a batch was served: the wrapped sequence moves to the next epoch's order
    assert sequence.epoch == 3
