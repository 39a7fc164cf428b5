"""Run files under several processes: process 0 writes, every process computes.

Two traps this module removes:

* Any Keras call that runs the model (``fit``, ``evaluate``, ``predict``) is one SPMD program over
  the global mesh: if only process 0 makes it, process 0 waits forever for the others. So a callback
  that predicts for a figure must not simply be skipped on the other processes; it uses
  :func:`local_predict`, which runs on this process's first device only, with no collective.
* Every assignment to a variable under ``DataParallel`` (``load_weights``, ``set_weights``) is a
  collective: jax checks that each process passes the same value. One process loading alone waits
  forever; processes loading different files fail. :func:`load_weights_from_chief` reads on process 0
  and broadcasts (:func:`update_from_chief`: any change process 0 makes to a local copy);
  :class:`BackupAndRestore` checks first that all processes see the same backup.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import keras
import numpy as np

from keras_glacier.distribution.cluster import DistributionError, check_same_everywhere, is_chief
from keras_glacier.fileio import load_keras_weights


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


@contextlib.contextmanager
def outside_distribution():
    """Inside this block Keras works as in a single process (no distribution, a fresh global seed
    generator), for work one process does alone: building, saving, exporting, plotting a
    :func:`local_copy`. Under the distribution every variable creation or assignment is a collective
    (jax checks the value is the same on each process), which one process alone would wait on forever;
    even saving a model can assign a variable."""
    from keras.src.backend.common import global_state

    previous = keras.distribution.distribution()
    seeds = global_state.get_global_attribute("global_seed_generator")
    keras.distribution.set_distribution(None)
    global_state.set_global_attribute("global_seed_generator", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("global_seed_generator", seeds)
        keras.distribution.set_distribution(previous)


def local_copy(model, optimizer: bool = False):
    """A copy of ``model`` with its weights (and, with ``optimizer``, a compiled optimizer holding the
    same state), built outside the distribution, for process 0 to save, export, predict and plot
    alone. Use the copy inside :func:`outside_distribution`."""
    weights = [np.asarray(w) for w in model.get_weights()]  # replicated: this process's copy
    state = [np.asarray(v.value) for v in model.optimizer.variables] if optimizer and model.optimizer else None
    with outside_distribution():
        clone = _rebuild(model)
        clone.set_weights(weights)
        if state is not None:
            twin = model.optimizer.__class__.from_config(model.optimizer.get_config())
            clone.compile(optimizer=twin)
            twin.build(clone.trainable_variables)
            for variable, value in zip(twin.variables, state):
                variable.assign(value)
    return clone


def _rebuild(model):
    """The same network, new variables. A subclass (GlacierDeepLab) is rebuilt from its own config:
    ``clone_model`` would return a plain Functional model, losing the class and what its config
    carries (bands, classes, statistics, the decision threshold) from the files process 0 saves."""
    from keras.src.models.functional import Functional

    if type(model) in (Functional, keras.Sequential):
        return keras.models.clone_model(model)
    return type(model).from_config(model.get_config())


def load_weights_from_chief(model, path) -> None:
    """Every process gets the weights of ``path`` as process 0 reads them (e.g. ``best.keras``), so only
    process 0 needs the file. Call it on every process at the same point.

    Why not ``model.load_weights`` on process 0 alone: under a distribution every assignment is a
    collective (jax checks the value is the same on each process), so one process alone waits forever.
    """
    import jax

    if jax.process_count() == 1:
        load_keras_weights(model, path)
        return
    from jax.experimental import multihost_utils

    found = bool(is_chief() and Path(path).exists())
    if not bool(multihost_utils.broadcast_one_to_all(np.int32(found))):
        raise DistributionError(f"{path}: not found on process 0")
    update_from_chief(model, lambda local: load_keras_weights(local, path))


def update_from_chief(model, update):
    """Process 0 runs ``update(local)`` on a :func:`local_copy` of ``model`` (outside the distribution, so
    it may run the network eagerly or change variables alone); every process then takes the copy's
    weights. Call it on every process at the same point. Returns ``update``'s result on process 0,
    None elsewhere."""
    import jax

    result = values = None
    if is_chief():
        local = local_copy(model)
        with outside_distribution():
            result = update(local)
            values = [np.asarray(w) for w in local.get_weights()]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if values is None:
            values = [np.zeros(w.shape, w.dtype) for w in model.weights]
        values = multihost_utils.broadcast_one_to_all(values)
    model.set_weights([np.asarray(v) for v in values])
    return result


class ChiefOnly(keras.callbacks.Callback):
    """Runs ``callback`` (ModelCheckpoint, CSVLogger, a figure writer) on process 0 only, at the epoch
    and train boundaries (batch hooks are dropped), handing it a :func:`local_copy` of the model and
    running it :func:`outside_distribution`: saving or predicting with the distributed model would be
    collectives that process 0 alone cannot complete. Callbacks that change training (EarlyStopping,
    BackupAndRestore below) run on every process instead.

    The copy is made once and refreshed with the current weights at each hook (:meth:`local_model`):
    a new copy per epoch would be a new model whose prediction function is traced and compiled again
    every epoch, while the other processes wait.
    """

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end")

    def __init__(self, callback: keras.callbacks.Callback) -> None:
        super().__init__()
        self.callback = callback
        self._copy = None

    def local_model(self):
        """This wrapper's local copy of the model, holding the distributed model's current weights."""
        if self._copy is None:
            self._copy = local_copy(self.model)
        else:
            weights = [np.asarray(w) for w in self.model.get_weights()]  # replicated: this process's copy
            with outside_distribution():
                self._copy.set_weights(weights)
        return self._copy

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _forward(self, hook: str, *args, **kwargs):
        if not is_chief():
            return
        self.callback.set_model(self.local_model())
        with outside_distribution():
            getattr(self.callback, hook)(*args, **kwargs)

    def on_train_begin(self, logs=None):
        self._forward("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs)


class SynchronousSteps(keras.callbacks.Callback):
    """Keeps ``fit`` / ``evaluate`` / ``predict`` from reading a step's logs on a helper thread.

    Under JAX, Keras hands the batch-end hooks to a thread pool whenever no callback overrides them
    (``CallbackList``'s async dispatch): the main thread then dispatches the next step, or the metrics'
    eager ``result()`` after the last one, while the helper still waits on the previous step's
    outputs. On XLA:CPU with several devices in one process, a one-process two-device job on a loaded
    2-core CI host hung there for good, in ``evaluate``: one device's thread waited at the step's
    all-reduce for the other, which never came (training, whose hooks BackupAndRestore makes
    synchronous, has not). Overriding the hooks, as this callback does, makes Keras run them on
    the calling thread, so each step's logs are read before anything else is dispatched: one
    multi-device program in flight at a time.
    """

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore for several processes: process 0 writes and deletes the backup; every
    process restores from it, so the run folder must be on a file system all hosts share (or copied
    to each host before ``--resume``). A process that sees another backup than process 0 is refused
    with one line instead of hanging or training diverged replicas."""

    def on_train_begin(self, logs=None):
        weights, meta = Path(self._weights_path), Path(self._training_metadata_path)
        state = [meta.read_text() if meta.exists() else None,
                 hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None]
        check_same_everywhere(state, f"backups in {self.backup_dir}",
                              "put the run folder on a file system every host shares (or copy it) before --resume")
        super().on_train_begin(logs)

    def _save_model(self):
        # Process 0 writes from a local copy (model and optimizer state): saving the distributed
        # model is a collective that it alone cannot complete.
        if not is_chief():
            return
        copy = local_copy(self.model, optimizer=True)
        model = self.model
        self.set_model(copy)
        try:
            with outside_distribution():
                super()._save_model()
        finally:
            self.set_model(model)

    def on_train_end(self, logs=None):
        if is_chief():
            super().on_train_end(logs)
