"""Data-parallel training over several processes and machines (``keras.distribution`` on ``jax.distributed``).

Typical use, in this order, before the model is built::

    info = distribution.initialize(coordinator, num_processes, process_id)   # or all None
    distribution.check_global_batch(batch_size)                                # refuses 6 on 4 devices
    distribution.set_data_parallel()                                           # one mesh, all devices
    train = distribution.ProcessShard(GlacierSequence(..., batch_size=batch_size))  # this process's rows

Only process 0 (``is_chief()``) writes run files, and it writes them from a ``local_copy(model)``
inside ``outside_distribution()`` (``ChiefOnly(callback)`` does that for Keras callbacks): under the
distribution, saving or assigning a variable is a collective that one process alone cannot finish.
Every ``fit`` / ``evaluate`` runs on every process. See cluster.py, data.py and callbacks.py for the why.
"""

from keras_glacier.distribution.cluster import (
    DEFAULT_TIMEOUT_S,
    ENV_ADDRESSES,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    ClusterInfo,
    DistributionError,
    check_global_batch,
    check_same_everywhere,
    chief_only,
    cluster_info,
    detected_cluster,
    initialize,
    is_chief,
    parse_address,
    set_data_parallel,
)

# The names below import keras; they load on first use, so that the command line can build its
# parser (DEFAULT_TIMEOUT_S) and join the job (initialize) without importing keras first.
_LAZY = {
    "BackupAndRestore": "callbacks", "ChiefOnly": "callbacks", "load_weights_from_chief": "callbacks",
    "update_from_chief": "callbacks", "SynchronousSteps": "callbacks",
    "local_copy": "callbacks", "local_predict": "callbacks", "outside_distribution": "callbacks",
    "PAD": "data", "ProcessShard": "data", "local_rows": "data", "padded_size": "data",
    "process_batch_indices": "data", "describe_runtime": "runtime", "format_runtime": "runtime",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_ADDRESSES",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "PAD",
    "BackupAndRestore",
    "ChiefOnly",
    "ClusterInfo",
    "DistributionError",
    "ProcessShard",
    "SynchronousSteps",
    "check_global_batch",
    "check_same_everywhere",
    "chief_only",
    "cluster_info",
    "describe_runtime",
    "detected_cluster",
    "format_runtime",
    "initialize",
    "is_chief",
    "load_weights_from_chief",
    "update_from_chief",
    "local_copy",
    "local_predict",
    "local_rows",
    "padded_size",
    "outside_distribution",
    "parse_address",
    "process_batch_indices",
    "set_data_parallel",
]
