"""Multi-process data parallelism (keras_glacier.distribution): the real model trained by two jax
processes on localhost (gloo CPU collectives, two virtual devices each) must match one process on one
device, without any distribution (so sharded batch-norm statistics, losses or metrics would show);
plus the set-up errors a user meets first and the batch-share arithmetic."""

from __future__ import annotations

import json
import re
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
from tests.distribution.processes import ROOT, free_port, start_logged, start_module, wait_all, worker_env

RUN_TIMEOUT_S = 420  # the whole multi-process comparison, compile included; a hang is killed, not waited on


def start(args: list[str], devices: int, log: Path) -> subprocess.Popen:
    return start_module("tests.distribution.worker", args, devices, log)


@pytest.fixture(scope="module")
def runs(module_tmp):
    """One 1-device run (no distribution) and one 2-process x 2-device run, side by side, same data and seed.

    The 1-device run is the worker's code in this test process (one device, no cluster), which spares a
    third fresh interpreter compiling the model on a 2-core machine; the two processes run meanwhile."""
    from keras_glacier.data import make_demo_dataset
    from tests.distribution import worker

    base = module_tmp("distributed")
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
    started = time.monotonic()
    try:
        assert worker.main([*common, "--out", str(single)]) == 0
    finally:
        wait_all(procs, logs, RUN_TIMEOUT_S)
    return single, multi, time.monotonic() - started


def load(folder: Path, index: int, name: str = ""):
    weights = np.load(folder / f"process_{index}{name}.npz")
    meta = json.loads((folder / f"process_{index}.json").read_text())
    return [weights[k] for k in weights.files], meta


def test_two_processes_of_two_devices_train_like_one_device(runs):
    single, multi, _ = runs
    init1, _ = load(single, 0, "_init")
    init2, _ = load(multi, 0, "_init")
    w1, m1 = load(single, 0)
    w2a, m2a = load(multi, 0)
    w2b, m2b = load(multi, 1)
    assert (m1["process_count"], m1["devices"], m1["local_devices"]) == (1, 1, 1)
    assert (m2a["process_count"], m2a["devices"], m2a["local_devices"]) == (2, 4, 2)
    assert m2a["how"] == "explicit" and m1["how"] == "single"
    # The replicas of one job hold bitwise the same weights and report the same metrics.
    assert all(np.array_equal(a, b) for a, b in zip(w2a, w2b))
    assert m2a["logs"] == m2b["logs"] and m2a["before"] == m2b["before"]
    # Same seed, same initial weights in both jobs.
    assert all(np.array_equal(a, b) for a, b in zip(init1, init2))

    # Validation before training: no cross-device reduction in inference, so the whole-set scores agree
    # to float rounding, though the last batch of 2 of the 6 validation tiles is padded to the 4 devices;
    # a per-process (half-set) confusion matrix would not. MCC != 0: the predictions are not all one
    # class, so the counts behind it are not trivially equal. Not the loss: Keras weighs a batch's loss by
    # its rows, padding included (keras_glacier.distribution.data).
    assert m1["before"]["mcc"] != 0
    for key, value in m1["before"].items():
        if key != "loss":
            assert m2a["before"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # After two SGD steps the weights agree to a fraction of the distance they moved (measured: 0.14%;
    # 1.3-1.8% between other device layouts), not to float rounding: the all-reduces sum in another
    # order and two steps of a from-scratch network amplify that. Per-device batch-norm statistics,
    # other tiles or another share would change the steps wholesale.
    diff = np.sqrt(sum(float(np.sum((b - a) ** 2)) for a, b in zip(w1, w2a)))
    moved = np.sqrt(sum(float(np.sum((a - s) ** 2)) for s, a in zip(init1, w1)))
    assert moved > 1e-2 and diff <= 0.02 * moved, (diff, moved)
    # Losses agree closely (not val_loss: padding, as above); the thresholded scores after training are
    # not compared: the probabilities sit within 0.003 of 0.5 after two steps, where such a change flips pixels.
    for key, rel in (("loss", 5e-3), ("val_r2", 1e-2)):
        assert m2a["logs"][key] == pytest.approx(m1["logs"][key], rel=rel), key


def test_run_files_in_a_job_of_2_processes(tmp_path):
    """Process 0 alone saves (checkpoints, backups) from a local copy; weights only process 0 has (read
    from a file, or changed in a local copy) reach every process; a resumed run restores the same state
    everywhere; unequal backups are refused."""
    address = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"log{i}.txt" for i in range(2)]
    procs = [start_logged([sys.executable, "-m", "tests.distribution.files_worker", address, str(i), str(tmp_path)],
                          logs[i], stdout=subprocess.PIPE, text=True) for i in range(2)]
    wait_all(procs, logs, 180)
    results = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    for i, result in enumerate(results):
        assert result["loaded"] is True
        assert result["update"] == (["updated", [0], True] if i == 0 else [None, [], True])
        assert result["epochs"] == [2, 2]  # 2 epochs, then resumed at epoch 2 of 4: 2 more, on both
        assert result["refused"].startswith("processes [1] have other backups in ")
        assert f"private_{i}" in result["refused"] and "file system every host shares" in result["refused"]
    assert not (tmp_path / "private_1").exists()  # process 1 wrote nothing


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


def test_figure_predictions_and_chief_only_callbacks_under_a_distribution(tmp_path):
    import keras

    from keras_glacier.distribution import BackupAndRestore, ChiefOnly, local_copy, local_predict

    images = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(x))
    expected = model.predict(images, verbose=0)
    distribution = keras.distribution.DataParallel(auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 2))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization()(x)
        dist_model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(x))
        dist_model.set_weights(model.get_weights())
        np.testing.assert_allclose(local_predict(dist_model, images), expected, rtol=1e-5, atol=1e-6)
        # Process 0 here: the wrapped writer runs and the backup is written, then deleted at the end.
        log = tmp_path / "history.csv"
        backup = tmp_path / "backup"
        dist_model.compile(optimizer="sgd", loss="mse")
        y = np.zeros((4, 8, 8, 1), np.float32)
        dist_model.fit(np.concatenate([images, images[:1]]), y, epochs=2, batch_size=4, verbose=0,
                       callbacks=[ChiefOnly(keras.callbacks.CSVLogger(str(log))),
                                  BackupAndRestore(str(backup), delete_checkpoint=False)])
        assert len(log.read_text().splitlines()) == 3 and (backup / "latest.weights.h5").exists()
        # Process 0's copy for saving and export lives outside the mesh and computes the same outputs.
        copy = local_copy(dist_model)
        assert keras.distribution.distribution() is distribution
        # (Keras gives a variable a layout when a distribution is set at its creation.)
        assert all(v._layout is not None for v in dist_model.weights)
        assert all(v._layout is None for v in copy.weights)
        np.testing.assert_allclose(copy.predict(images, verbose=0), local_predict(dist_model, images),
                                   rtol=1e-5, atol=1e-6)
    finally:
        keras.distribution.set_distribution(None)


def test_synchronous_steps_keep_the_batch_hooks_on_the_calling_thread():
    """Keras under JAX hands batch-end hooks nobody overrides to a helper thread; with SynchronousSteps
    (what every fit / evaluate under a distribution gets) they run on the thread that dispatches the
    steps, so a multi-device step is read before the next program starts."""
    import threading

    import keras

    from keras_glacier.distribution import SynchronousSteps
    from keras_glacier.training import parallel

    class Threads(keras.callbacks.Callback):
        async_safe = True  # Keras' own flag: may run on its helper thread

        def __init__(self):
            super().__init__()
            self.seen = set()

        def on_train_batch_end(self, batch, logs=None):
            self.seen.add(threading.get_ident())

        on_test_batch_end = on_predict_batch_end = on_train_batch_end

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)

    def threads(extra):
        seen = Threads()
        model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[seen, *extra])
        model.evaluate(x, y, batch_size=2, verbose=0, callbacks=[seen, *extra])
        model.predict(x, batch_size=2, verbose=0, callbacks=[seen, *extra])
        return seen.seen

    assert threading.get_ident() not in threads([])  # Keras' async dispatch: all on its helper thread
    assert threads([SynchronousSteps()]) == {threading.get_ident()}
    assert parallel.step_callbacks() == []
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
    try:
        assert [type(c) for c in parallel.step_callbacks()] == [SynchronousSteps]
    finally:
        keras.distribution.set_distribution(None)


def test_describe_runtime_on_this_cpu():
    import jax

    from keras_glacier.distribution import describe_runtime, format_runtime

    info = describe_runtime()
    assert info["platform"] == "cpu" and info["devices"] == jax.device_count() and info["processes"] == 1
    assert info["precision"] == "float32" and info["batch_size"] % info["devices"] == 0
    assert info["distribute"] == ("data_parallel" if info["devices"] > 1 else "none")
    text = format_runtime(info)
    assert set(info["reasons"]) == {"precision", "distribute", "batch_size"}
    assert all(why in text for why in info["reasons"].values())


def test_install_keeps_an_accelerator_jax():
    """``pip install -e .`` must not swap Colab's jax[tpu]/jax[cuda12] for another build: the base
    dependency is plain jax; the flavour is an extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    jax_deps = [d for d in project["dependencies"] if d.replace(" ", "").startswith("jax")]
    assert len(jax_deps) == 1 and "[" not in jax_deps[0]
    extras = project["optional-dependencies"]
    for flavour in ("cpu", "cuda12", "tpu"):
        assert extras[flavour] == [jax_deps[0].replace("jax", f"jax[{flavour}]", 1)]


def test_local_copy_keeps_a_model_subclass_and_its_config():
    """Process 0 saves and exports a local copy: a GlacierDeepLab-like subclass must stay itself (its
    config carries bands, classes and the decision threshold), not turn into a plain Functional."""
    import keras

    from keras_glacier.distribution import local_copy

    class Tagged(keras.Model):
        def __init__(self, tag=0.5, **kwargs):
            inputs = keras.Input((4,))
            super().__init__(inputs, keras.layers.Dense(2)(inputs), **kwargs)
            self.tag = tag

        def get_config(self):
            return {"tag": self.tag}

        @classmethod
        def from_config(cls, config):
            return cls(**config)

    model = Tagged(tag=0.25)
    copy = local_copy(model)
    assert type(copy) is Tagged and copy.tag == 0.25 and copy is not model
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copy.get_weights()))


def test_a_process_past_its_deadline_is_killed_and_its_stack_shown(tmp_path):
    """A multi-process test that hangs must say where and why: a process still running at the deadline
    gets SIGABRT first, so its log ends with faulthandler's traceback, then its whole group is killed;
    a peer that died first (the usual cause of a hang in a collective) is shown before it."""
    hangs = "import time\nimport numpy\n\ndef waits_for_a_peer():\n    time.sleep(600)\n\nwaits_for_a_peer()\n"
    dies = "import sys\nsys.exit('peer lost its data')\n"
    logs = [tmp_path / "log0.txt", tmp_path / "log1.txt"]
    procs = [start_logged([sys.executable, "-c", script], log) for script, log in zip([hangs, dies], logs)]
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_all(procs, logs, 3)
    message = str(failure.value)
    assert re.search(r"(?s)^log1.txt exited with 1:\npeer lost its data\n+"
                     r"log0.txt hung, killed at the deadline with -\d+:.*in waits_for_a_peer", message), message
    assert "Extension modules:" not in message  # faulthandler lists numpy's; they would crowd out the stacks
    assert all(proc.returncode is not None for proc in procs) and time.monotonic() - started < 60
