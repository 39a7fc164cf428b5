"""The training job over several processes and devices: the glue between fit.py and keras_glacier.distribution.

The rules (why: see keras_glacier.distribution): every process runs every ``fit`` / ``evaluate`` /
weight assignment (they are collectives over the global mesh); each process reads only its share of
a batch (``ProcessShard``); only process 0 writes the run folder, from a ``local_copy`` of the model
``outside_distribution``. A single process without ``--distribute data_parallel`` has no
distribution, and every helper here is then the identity: the default job runs exactly as before.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from keras_glacier import distribution
from keras_glacier.fileio import load_keras_weights
from keras_glacier.training.config import TrainConfig


def process_count() -> int:
    import jax

    return jax.process_count()


def is_chief() -> bool:
    """Process 0 (the only process of a plain run) writes the run files."""
    return distribution.is_chief()


def distributed() -> bool:
    """A ``keras.distribution`` is set: several processes, or ``--distribute data_parallel``."""
    import keras

    return keras.distribution.distribution() is not None


def set_up(config: TrainConfig) -> int:
    """Checks the processes agree and sets the data-parallel mesh when wanted; returns the devices in use.

    Called once every process has seeded Keras. Several processes always train data-parallel over all
    their devices; one process does when ``config.distribute == "data_parallel"`` (and has more than
    one device).
    """
    info = distribution.cluster_info()
    if info.process_count > 1:
        distribution.check_same_everywhere(config.to_dict(), "settings")
    if info.process_count == 1 and config.distribute != "data_parallel":
        return 1
    distribution.check_global_batch(config.batch_size)
    distribution.set_data_parallel()
    return info.global_devices


def check_same_tiles(train) -> None:
    """Every process must train on the same tiles in the same order (the split is computed on each)."""
    distribution.check_same_everywhere([s.name for s in train], "training tiles",
                                       "give every process the same --data (same files) and settings")


def barrier(name: str) -> None:
    """All processes wait here (for process 0 to finish writing a file the others read)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def cache_folder(run_dir: Path) -> Path:
    """The tile cache's folder: one per process when there are several (each builds its own)."""
    if process_count() == 1:
        return run_dir / "cache"
    return run_dir / "cache" / f"process_{distribution.cluster_info().process_index}"


def shard(sequence):
    """What ``fit`` / ``evaluate`` read: this process's share of each global batch under a distribution
    (also with one process, where it pads a last batch the devices cannot split), else the sequence."""
    return distribution.ProcessShard(sequence) if distributed() else sequence


def step_callbacks() -> list:
    """For every ``fit`` / ``evaluate`` under a distribution: each step's logs read on the calling
    thread before the next program is dispatched (``distribution.SynchronousSteps`` says why); none
    without one, where Keras' overlap of host and device is harmless."""
    return [distribution.SynchronousSteps()] if distributed() else []


def chief_only(callback):
    """A callback that writes files (checkpoint, CSV log, figures): under a distribution it runs on
    process 0 only, from a local copy of the model (see ``distribution.ChiefOnly``)."""
    return distribution.ChiefOnly(callback) if distributed() else callback


def unwrap(callback):
    return callback.callback if isinstance(callback, distribution.ChiefOnly) else callback


def backup_and_restore(folder: Path):
    import keras

    if distributed():
        return distribution.BackupAndRestore(str(folder))
    return keras.callbacks.BackupAndRestore(str(folder))


def load_best(model, path: Path) -> None:
    """The best epoch's weights into ``model`` on every process (only process 0 needs the file)."""
    if not distributed():
        if path.exists():
            # Same architecture, so loading weights into the compiled model reuses its compiled functions.
            load_keras_weights(model, path)
        return
    if process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        if not bool(multihost_utils.broadcast_one_to_all(np.int32(is_chief() and path.exists()))):
            return
    elif not path.exists():
        return
    distribution.load_weights_from_chief(model, path)


def update_from_chief(model, update):
    """``update(model)``; under a distribution process 0 runs it on a local copy and every process takes
    the result (see ``distribution.update_from_chief``). Returns ``update``'s result (None off process 0)."""
    if not distributed():
        return update(model)
    return distribution.update_from_chief(model, update)


def chief_model(model, wrapper=None):
    """(model to save, context to use it in) for process 0's writing: the model itself without a
    distribution; with one, a local copy outside the distribution (``wrapper``'s, a ChiefOnly that
    already predicted with its copy, so that its compiled prediction function is reused)."""
    if not distributed():
        return model, contextlib.nullcontext()
    copy = wrapper.local_model() if isinstance(wrapper, distribution.ChiefOnly) else distribution.local_copy(model)
    return copy, distribution.outside_distribution()
