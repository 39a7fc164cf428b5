"""What every benchmark shares: a description of the machine, interleaved timing, markdown tables.

Timings on a shared machine drift with whatever else runs, so the benchmarks never compare two
figures taken minutes apart: they take one sample of each contender in turn, round after round, in
the same process, and report medians and the ratio of medians. The load average at the start and
end of a run is recorded with the figures, so a reader can tell a quiet run from a noisy one.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

#: glibc malloc settings (read from the environment when a process starts) that keep freed memory in
#: the process: one arena for all threads, no ``mmap`` for large blocks, no trimming of the heap.
REUSE_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
ALLOCATORS = ("default", "reuse")


def allocator_mode() -> str:
    """``"reuse"`` when this process started with REUSE_MEMORY_ENV, else ``"default"``.

    Why it matters: XLA:CPU allocates one temporary buffer per execution of the training step (about
    0.8 GB at 4x256) from a worker thread; glibc serves a block that large with a fresh ``mmap`` and
    unmaps it on free, so every step page-faults the whole buffer in again (about 0.2 M minor faults
    and 0.3-0.5 s of kernel time per step on 2 cores). With the settings the buffer stays mapped.
    PyTorch's allocator benefits as well, so compare the two frameworks under the same setting. The
    settings only act from process start (glibc fixes the arena limit when a second thread first
    allocates), hence environment variables rather than ``mallopt`` at run time.
    """
    return "reuse" if all(os.environ.get(k) == v for k, v in REUSE_MEMORY_ENV.items()) else "default"


def restart_with_allocator(mode: str, module: str, argv: list[str]) -> None:
    """Re-executes ``python -m module argv`` with the allocator environment of ``mode`` if it differs."""
    if mode not in ALLOCATORS:
        raise ValueError(f"allocator mode must be one of {ALLOCATORS}, got {mode!r}")
    if allocator_mode() == mode:
        return
    env = dict(os.environ)
    for key in REUSE_MEMORY_ENV:
        env.pop(key, None)
    if mode == "reuse":
        env.update(REUSE_MEMORY_ENV)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def allocator_description() -> str:
    if allocator_mode() == "reuse":
        return "reuse (" + " ".join(f"{k}={v}" for k, v in REUSE_MEMORY_ENV.items()) + ")"
    return "glibc default"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> str:
    """1-minute load average over the number of cores, e.g. ``"2.9 on 2 cores"``."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def jax_device() -> str:
    """``platform: device kind`` of JAX's default device, e.g. ``cpu: cpu`` or ``gpu: NVIDIA H100``."""
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {device.device_kind} (x{jax.device_count()})"


def scheduling() -> str:
    """This process's nice value (and Linux autogroup's): raised priority makes timings steadier on a shared host."""
    text = f"nice {os.nice(0)}"
    try:
        with open("/proc/self/autogroup", encoding="ascii") as handle:
            text += ", " + handle.read().split("/")[-1].strip().replace("autogroup-", "autogroup ")
    except OSError:
        pass
    return text


def machine() -> dict[str, str]:
    """The facts a reader needs to compare figures across machines."""
    import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)

    memory = memory_gib()
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{memory:.0f} GiB" if memory else "unknown",
        "python": platform.python_version(),
        "jax": _version("jax"),
        "keras": _version("keras"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "jax device": jax_device(),
    }
    try:
        import torch

        info["torch threads"] = str(torch.get_num_threads())
        info["torch device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    info["allocator"] = allocator_description()
    info["scheduling"] = scheduling()
    info["load at start"] = load_average()
    return info


def sync(value):
    """Block until an asynchronously dispatched JAX (or torch CUDA) result is ready, then return it."""
    import jax

    jax.block_until_ready(value)
    return value


def interleaved(contenders: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, alternating them call by call (after ``warmup`` rounds).

    Each callable must return only once its work is finished (synchronise inside it).
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """Relative half-range around the median (a crude noise figure: 0.05 = +-5 %)."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / 2 / mid if mid else 0.0


def _cell(value) -> str:
    if isinstance(value, float):
        magnitude = abs(value)
        if value == 0 or 0.01 <= magnitude < 1:
            return f"{value:.3g}"
        if 1 <= magnitude < 10:
            return f"{value:.2f}"
        if 10 <= magnitude < 1e5:
            return f"{value:.1f}"
        return f"{value:.2e}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (columns: the union of their keys in first-seen order)."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def machine_table(info: Mapping[str, str]) -> str:
    return markdown_table([{"": key, "value": value} for key, value in info.items()], columns=["", "value"])
