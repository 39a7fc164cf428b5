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

from keras_glacier.distribution.callbacks import (
    BackupAndRestore,
    ChiefOnly,
    load_weights_from_chief,
    local_copy,
    local_predict,
    outside_distribution,
)
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
from keras_glacier.distribution.data import PAD, ProcessShard, local_rows, padded_size, process_batch_indices
from keras_glacier.distribution.runtime import describe_runtime, format_runtime

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
    "local_copy",
    "local_predict",
    "local_rows",
    "padded_size",
    "outside_distribution",
    "parse_address",
    "process_batch_indices",
    "set_data_parallel",
]
