"""Run files under several processes: process 0 writes, every process computes.

Two traps this module removes:

* Any Keras call that runs the model (``fit``, ``evaluate``, ``predict``) is one SPMD program over
  the global mesh: if only process 0 makes it, process 0 waits forever for the others. So a callback
  that predicts for a figure must not simply be skipped on the other processes; it uses
  :func:`local_predict`, which runs on this process's first device only, with no collective.
* Every assignment to a variable under ``DataParallel`` (``load_weights``, ``set_weights``) is a
  collective: jax checks that each process passes the same value. One process loading alone waits
  forever; processes loading different files fail. :func:`load_weights_from_chief` reads on process 0
  and broadcasts; :class:`BackupAndRestore` checks first that all processes see the same backup.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from keras_glacier.distribution.cluster import DistributionError, check_same_everywhere, is_chief


def local_predict(model, images) -> np.ndarray:
    """``model(images)`` (inference) on this process's first device, from the replicated weights.

    Use it for figures and previews under a distribution: ``model.predict`` would need every process
    and a batch divisible by the device count. Without a distribution it is ``model.predict``.
    """
    import jax

    images = np.asarray(images)
    if keras.distribution.distribution() is None:
        return np.asarray(model.predict(images, batch_size=len(images), verbose=0))
    device = jax.local_devices()[0]

    def local(variables):  # fully replicated arrays: np.asarray reads this process's copy
        return [jax.device_put(np.asarray(v.value), device) for v in variables]

    trainable, non_trainable = local(model.trainable_variables), local(model.non_trainable_variables)
    fn = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
    return np.asarray(fn(trainable, non_trainable, jax.device_put(images, device)))


def local_copy(model):
    """A copy of ``model`` with its weights, built outside the distribution (plain arrays on this
    process's default device), for process 0 to save, export (the PyTorch parity check runs the model)
    and plot after training without involving the other processes."""
    from keras.src.backend.common import global_state

    weights = [np.asarray(w) for w in model.get_weights()]  # replicated: this process's copy
    previous = keras.distribution.distribution()
    # The clone's initializers draw from Keras' global seed generator, whose state variable was made
    # under the distribution: advancing it would be a collective that only this process joins.
    seeds = global_state.get_global_attribute("global_seed_generator")
    keras.distribution.set_distribution(None)
    global_state.set_global_attribute("global_seed_generator", None)
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(weights)
    finally:
        global_state.set_global_attribute("global_seed_generator", seeds)
        keras.distribution.set_distribution(previous)
    return clone


def load_weights_from_chief(model, path) -> None:
    """Every process gets the weights of ``path`` as process 0 reads them (e.g. ``best.keras``), so only
    process 0 needs the file. Call it on every process at the same point.

    Why not ``model.load_weights`` on process 0 alone: under a distribution every assignment is a
    collective (jax checks the value is the same on each process), so one process alone waits forever.
    """
    import jax

    if jax.process_count() == 1:
        model.load_weights(path)
        return
    from jax.experimental import multihost_utils

    found = bool(is_chief() and Path(path).exists())
    if not bool(multihost_utils.broadcast_one_to_all(np.int32(found))):
        raise DistributionError(f"{path}: not found on process 0")
    if found:
        clone = local_copy(model)
        clone.load_weights(path)
        values = [np.asarray(w) for w in clone.get_weights()]
    else:
        values = [np.zeros(w.shape, w.dtype) for w in model.weights]
    values = multihost_utils.broadcast_one_to_all(values)
    model.set_weights([np.asarray(v) for v in values])


class ChiefOnly(keras.callbacks.Callback):
    """Runs ``callback`` (a file writer: ModelCheckpoint, CSVLogger, ...) on process 0 only.

    Only for callbacks that never run the model or change training; those that do (EarlyStopping,
    BackupAndRestore, a figure writer that predicts) must run everywhere.
    """

    def __init__(self, callback: keras.callbacks.Callback) -> None:
        super().__init__()
        self.callback = callback

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def __getattribute__(self, name):
        # Forward every on_* hook to the wrapped callback on the chief; a no-op elsewhere.
        if name.startswith("on_"):
            target = object.__getattribute__(self, "callback")
            return getattr(target, name) if is_chief() else (lambda *args, **kwargs: None)
        return object.__getattribute__(self, name)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore for several processes: process 0 writes and deletes the backup; every
    process restores from it, so the run folder must be on a file system all hosts share (or copied
    to each host before ``--resume``). A process that sees another backup than process 0 is refused
    with one line instead of hanging or training diverged replicas."""

    def on_train_begin(self, logs=None):
        weights, meta = Path(self._weights_path), Path(self._training_metadata_path)
        state = [meta.read_text() if meta.exists() else None,
                 hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None]
        check_same_everywhere(state, f"backups in {self.backup_dir}")
        super().on_train_begin(logs)

    def _save_model(self):
        if is_chief():
            super()._save_model()

    def on_train_end(self, logs=None):
        if is_chief():
            super().on_train_end(logs)
