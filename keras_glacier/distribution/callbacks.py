"""Run files under several processes: process 0 writes, every process computes.

Two traps this module removes:

* Any Keras call that runs the model (``fit``, ``evaluate``, ``predict``) is one SPMD program over
  the global mesh: if only process 0 makes it, process 0 waits forever for the others. So a callback
  that predicts for a figure must not simply be skipped on the other processes; it uses
  :func:`local_predict`, which runs on this process's first device only, with no collective.
* ``load_weights`` under ``DataParallel`` puts *each process's own* values on its devices. A resumed run
  whose processes read different files (or only process 0 can see the run folder) would silently
  train diverged replicas; :class:`BackupAndRestore` loads on process 0 and broadcasts.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_glacier.distribution.cluster import is_chief


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
    weights = [np.asarray(w) for w in model.get_weights()]  # replicated: this process's copy
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(weights)
    finally:
        keras.distribution.set_distribution(previous)
    return clone


def broadcast_from_chief(model, optimizer: bool = False) -> None:
    """Gives every process process 0's weights (and optimizer state): call it on every process after
    process 0 alone loaded a file (e.g. ``best.keras``), since ``load_weights`` under a distribution
    keeps each process's own values. Does nothing in a single process."""
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    variables = list(model.variables)
    if optimizer and model.optimizer is not None:
        variables += list(model.optimizer.variables)
    values = multihost_utils.broadcast_one_to_all([np.asarray(v.value) for v in variables])
    for variable, value in zip(variables, values):
        variable.assign(np.asarray(value))


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
    """Keras' BackupAndRestore for several processes: process 0 writes and deletes the backup; at the
    start it restores (model, optimizer, epoch) and broadcasts them, so every process resumes from the
    same state even without a shared file system."""

    def on_train_begin(self, logs=None):
        import jax

        if is_chief():
            super().on_train_begin(logs)
        if jax.process_count() > 1:
            self._broadcast_state()

    def _broadcast_state(self):
        from jax.experimental import multihost_utils

        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        broadcast_from_chief(model, optimizer=True)
        epoch = getattr(model, "_initial_epoch", None)
        epoch = int(multihost_utils.broadcast_one_to_all(np.int32(-1 if epoch is None else epoch)))
        model._initial_epoch = None if epoch < 0 else epoch

    def _save_model(self):
        if is_chief():
            super()._save_model()

    def on_train_end(self, logs=None):
        if is_chief():
            super().on_train_end(logs)
