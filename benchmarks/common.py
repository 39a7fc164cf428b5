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
import time
from collections.abc import Callable, Mapping, Sequence

# The allocator settings have one definition, shared with the training job (which restarts under them).
from keras_glacier.memory import (  # noqa: F401  (re-exported for the benchmarks)
    ALLOCATORS,
    REUSE_MEMORY_ENV,
    allocator_mode,
    restart_with_allocator,
)


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
