"""One process of the run-files test (``python -m tests.distribution.files_worker``): a tiny Dense
model (the point is the file handling, not the network) under a 2-process DataParallel mesh.

1. ``load_weights_from_chief``: only process 0 has the weights file; both end with its weights.
   ``update_from_chief``: process 0 alone changes a local copy; both end with the copy's weights.
2. ``BackupAndRestore`` on a shared folder: both processes resume from process 0's backup.
3. A backup only process 0 can see is refused with one line on every process.
Prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    coordinator, process_id, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    from keras_glacier import distribution

    info = distribution.initialize(coordinator, 2, process_id, timeout_s=60)
    import keras
    from jax.experimental import multihost_utils

    keras.utils.set_random_seed(0)
    distribution.set_data_parallel()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    result = {}

    if info.is_chief:  # a file only process 0 has, written outside the mesh
        copy = distribution.local_copy(model)
        with distribution.outside_distribution():
            copy.save_weights(folder / "only_on_0.weights.h5")
    multihost_utils.sync_global_devices("file written")
    reference = [np.asarray(w) for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in reference])  # the same on every process: allowed
    distribution.load_weights_from_chief(model, folder / "only_on_0.weights.h5")
    result["loaded"] = all(np.array_equal(np.asarray(a), b) for a, b in zip(model.get_weights(), reference))

    calls = []

    def update(local):  # runs outside the mesh on process 0 only: a collective here would hang
        calls.append(info.process_index)
        local.set_weights([np.full(w.shape, 7.0, w.dtype) for w in local.get_weights()])
        return "updated"

    answer = distribution.update_from_chief(model, update)
    result["update"] = [answer, calls, all(np.all(np.asarray(w) == 7.0) for w in model.get_weights())]
    model.set_weights(reference)  # the same on every process again

    # Process 0 alone saves the distributed model (what ModelCheckpoint / BackupAndRestore do).
    x = np.ones((4, 4), "float32")[info.process_index * 2 : info.process_index * 2 + 2]
    y = np.zeros((2, 2), "float32")
    shared = folder / "backup"
    first = model.fit(x, y, epochs=2, batch_size=2, verbose=0,
                      callbacks=[distribution.BackupAndRestore(str(shared), delete_checkpoint=False)])
    multihost_utils.sync_global_devices("backup written")
    resumed = model.fit(x, y, epochs=4, batch_size=2, verbose=0,
                        callbacks=[distribution.BackupAndRestore(str(shared), delete_checkpoint=False)])
    result["epochs"] = [len(first.history["loss"]), len(resumed.history["loss"])]

    private = folder / f"private_{info.process_index}"  # a backup only process 0 sees
    if info.is_chief:
        copy = distribution.local_copy(model)
        with distribution.outside_distribution():
            private.mkdir()
            copy.save_weights(private / "latest.weights.h5")
        (private / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    multihost_utils.sync_global_devices("private backup written")
    try:
        model.fit(x, y, epochs=3, batch_size=2, verbose=0, callbacks=[distribution.BackupAndRestore(str(private))])
        result["refused"] = None
    except distribution.DistributionError as exc:
        result["refused"] = str(exc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
