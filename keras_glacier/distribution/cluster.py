"""Joining the processes of one training job (``jax.distributed``) and the data-parallel mesh over them.

Why the address is probed before ``jax.distributed.initialize``: when the coordinator cannot be
reached, XLA's coordination client does not raise, it aborts the whole process with a C++ check
failure and a stack dump. Probing the TCP port first (process 0: can it bind; the others: can they
connect, retrying until the timeout) turns the common mistakes (wrong host, wrong port, process 0
not started, a firewall) into one line naming the address.

Keras' own ``keras.distribution.initialize`` reads the same ``KERAS_DISTRIBUTION_*`` variables but
has no timeout and no such check, so this module calls ``jax.distributed.initialize`` itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)
from keras_glacier.errors import UsageError

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
DEFAULT_TIMEOUT_S = 300.0
#: How long a process that finished waits at exit for the others (jax's default: 300 s). Process 0
#: works alone after the last collective (the decision threshold over the validation set, model.keras,
#: the export and its parity check), which can take longer on a large validation set; a process that
#: died is still noticed by the heartbeat (100 s), not after this.
SHUTDOWN_TIMEOUT_S = 3600
_PROBE_INTERVAL_S = 0.5


class DistributionError(UsageError):
    """The multi-process set-up is wrong (flags, addresses, sizes); the message is one line, and the
    command-line runner prints it as ``error: ...`` with exit status 2, like every other usage error."""


@dataclass(frozen=True)
class ClusterInfo:
    """Where this process stands: ``how`` is "single", "explicit" (flags or KERAS_DISTRIBUTION_*) or
    the name of the cluster jax detected (SLURM, Cloud TPU, Open MPI, ...)."""

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    how: str

    @property
    def is_chief(self) -> bool:
        return self.process_index == 0


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); the first entry of a comma-separated list
    (Keras' job-addresses form) is the coordinator."""
    text = str(address).split(",")[0].strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributionError(f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
    return host, int(port)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributionError(f"{name}={value!r} is not an integer") from None


def detected_cluster() -> str | None:
    """The name of the cluster environment jax would auto-detect (TPU pod slice, SLURM with several
    tasks, Open MPI, Kubernetes), or None. Uses jax's own detector list, so it follows jax."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # pragma: no cover - jax moved its private module; fall back to SLURM only
        return "SlurmCluster" if int(os.environ.get("SLURM_NTASKS", "1")) > 1 else None
    import warnings

    for env in ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            with warnings.catch_warnings():  # jax's "install jax[k8s]" advice in any pod of a plain run
                warnings.simplefilter("ignore")
                present = env.is_env_present()
        except Exception:  # a detector that cannot even look (no metadata server, no package)
            present = False
        if not present:
            continue
        if env.__name__ == "SlurmCluster" and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
            continue  # one task of a SLURM job: a plain single-process run
        return env.__name__
    return None


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def _probe(host: str, port: int, process_id: int, num_processes: int, timeout_s: float) -> None:
    where = f"{host}:{port}"
    if process_id == 0:
        # The coordinator service binds [::]:port; a taken port would abort inside XLA.
        for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                return
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise DistributionError(
                        f"coordinator port {port} of {where} is already in use on this host (process 0 "
                        f"binds it): choose another --coordinator port") from None
                continue  # no IPv6 on this host: try IPv4
        return
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, left))):
                return
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        if time.monotonic() + _PROBE_INTERVAL_S >= deadline:
            raise DistributionError(
                f"process {process_id} of {num_processes} cannot reach the coordinator at {where} within "
                f"{timeout_s:g} s ({last}): start process 0 on that host and check the address, port and firewall")
        time.sleep(_PROBE_INTERVAL_S)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ClusterInfo:
    """Joins this process to the job; call once, before anything touches a jax device.

    Order of sources: the arguments (the CLI's ``--coordinator HOST:PORT --num-processes N
    --process-id I``), then Keras' ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` / ``_NUM_PROCESSES`` /
    ``_PROCESS_ID``; with none of them, a cluster jax detects itself (Cloud TPU pod slice, SLURM
    ``srun`` with several tasks, Open MPI, Kubernetes) is joined through jax's detection, and
    otherwise this is a plain single-process run (nothing is started). ``coordinator="auto"`` forces
    jax's detection. ``timeout_s`` bounds the wait for the coordinator and for all processes to join.
    """
    import jax

    if jax.distributed.is_initialized():
        return cluster_info("explicit")
    coordinator = coordinator if coordinator is not None else os.environ.get(ENV_ADDRESSES) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    timeout_s = float(timeout_s)
    if not timeout_s > 0:
        raise DistributionError(f"the coordinator timeout must be positive, got {timeout_s:g} s")

    if coordinator == "auto" or (coordinator is None and num_processes is None and process_id is None):
        how = detected_cluster()
        if how is None and coordinator != "auto":
            return cluster_info("single")
        _refuse_started_backend()
        try:
            jax.distributed.initialize(initialization_timeout=math.ceil(timeout_s),
                                       shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributionError(f"cluster detection ({how or 'none found'}) failed: {first}") from None
        return cluster_info(how or "auto")

    missing = [flag for flag, value in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                        ("--process-id", process_id)) if value is None]
    if missing:
        raise DistributionError(f"multi-process training needs --coordinator, --num-processes and --process-id "
                                f"(or {ENV_ADDRESSES}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing "
                                f"{', '.join(missing)}")
    host, port = parse_address(coordinator)
    if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
        raise DistributionError(f"--process-id {process_id} must be in 0..{int(num_processes) - 1} "
                                f"(--num-processes {num_processes})")
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes == 1:
        return cluster_info("single")
    start = time.monotonic()
    _probe(host, port, process_id, num_processes, timeout_s)
    _refuse_started_backend()
    left = max(1, math.ceil(timeout_s - (time.monotonic() - start)))
    jax.distributed.initialize(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
                               num_processes=num_processes, process_id=process_id, initialization_timeout=left,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    return cluster_info("explicit")


def _refuse_started_backend() -> None:
    if _backends_started():
        raise DistributionError("jax already ran on this process's devices: call distribution.initialize() "
                                "before building the model or touching any array")


def cluster_info(how: str = "single") -> ClusterInfo:
    import jax

    return ClusterInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(), how)


def is_chief() -> bool:
    """Process 0 writes the run files (checkpoints, history, plots, export); the others only compute."""
    import jax

    return jax.process_index() == 0


def chief_only(fn):
    """Decorator: ``fn`` runs on process 0 only (returns None elsewhere). Only for functions that
    run no jax computation over the global mesh: those need every process, or the job hangs."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_chief() else None

    return wrapper


def check_global_batch(global_batch: int, num_devices: int | None = None, num_processes: int | None = None) -> int:
    """Refuses a global batch the devices cannot split evenly; returns the per-process batch size."""
    import jax

    num_devices = jax.device_count() if num_devices is None else int(num_devices)
    num_processes = jax.process_count() if num_processes is None else int(num_processes)
    global_batch = int(global_batch)
    where = f"{num_devices} devices" + (f" ({num_processes} processes)" if num_processes > 1 else "")
    if global_batch < 1 or global_batch % num_devices:
        lower = max(num_devices, global_batch // num_devices * num_devices)
        upper = (global_batch // num_devices + 1) * num_devices
        choices = f"{lower} or {upper}" if lower != upper else f"{upper}"
        raise DistributionError(f"global batch size {global_batch} is not a multiple of the {where}: "
                                f"use e.g. {choices}")
    return global_batch // num_processes


def set_data_parallel(devices=None):
    """One ``keras.distribution.DataParallel`` over every device of every process, set globally.

    Variables are replicated, each batch is split over the devices along its first axis, and every
    compiled step sees the *global* batch: the loss, the gradients, the batch-norm statistics and the
    metric updates (hence the confusion counts behind val_mcc) are whole-batch values, reduced by
    XLA's collectives. ``auto_shard_dataset=False``: the input is a PyDataset that already yields only
    this process's share (:class:`~keras_glacier.distribution.data.ProcessShard`).
    Returns the distribution, or None with a single device in a single process (nothing to split).
    """
    import jax
    import keras

    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1 and jax.process_count() == 1:
        return None
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return distribution


def check_same_everywhere(value, what: str, fix: str = "start every process with the same flags and data") -> None:
    """Refuses to go on when processes disagree on ``value`` (JSON-able: the settings, the seed, the
    file list): a process with another batch size or seed would silently train something else."""
    import jax

    if jax.process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()[:16]
    words = np.frombuffer(digest, dtype=np.int32)
    every = np.asarray(multihost_utils.process_allgather(words))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise DistributionError(f"processes {differ} have other {what} than process 0: {fix}")
