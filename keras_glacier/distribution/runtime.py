"""What the notebook prints before training: the accelerator found and the settings chosen for it, with why."""

from __future__ import annotations

GIB = 1 << 30
DEFAULT_BATCH_PER_DEVICE = 4  # train.py's default batch on one device (256x256 crops)


def _precision(devices) -> tuple[str, str]:
    try:  # the model room's rule (TPU, GPU of compute capability >= 8.0 -> bfloat16), when present
        from keras_glacier.accelerator import auto_precision
    except ImportError:
        auto_precision = None
    if auto_precision is not None:
        return auto_precision(devices)
    platforms = {d.platform for d in devices}
    if platforms == {"tpu"}:
        return "mixed_bfloat16", "TPUs compute bfloat16 natively"
    if platforms == {"gpu"}:
        caps = [getattr(d, "compute_capability", None) for d in devices]
        if all(c is not None and float(c) >= 8.0 for c in caps):
            return "mixed_bfloat16", "GPUs of compute capability >= 8.0 compute bfloat16 natively"
        return "float32", "a GPU without native bfloat16 (compute capability < 8.0) or of unknown capability"
    return "float32", "CPUs only emulate bfloat16, so it would be slower and less accurate"


def _device_memory(device) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # CPU devices and some plugins report nothing
        return None
    return stats.get("bytes_limit")


def _batch_per_device(platform: str, memory: int | None) -> tuple[int, str]:
    if platform == "cpu":
        return DEFAULT_BATCH_PER_DEVICE, "CPU: the default batch; a larger one only trains slower per step"
    if memory is None:
        return 8, f"{platform.upper()}: device memory not reported; 8 tiles of 256x256 per device is a safe start"
    size = 16 if memory >= 30 * GIB else 8 if memory >= 14 * GIB else DEFAULT_BATCH_PER_DEVICE
    return size, f"{platform.upper()}: {memory / GIB:.0f} GiB per device -> {size} tiles of 256x256 per device"


def describe_runtime() -> dict:
    """The runtime (TPU, GPU or CPU), its devices and processes, and suggested settings with reasons.

    Keys: ``platform``, ``device_kind``, ``devices`` (global), ``local_devices``, ``processes``,
    ``precision``, ``distribute`` ("data_parallel" with more than one device, else "none"),
    ``batch_size`` (global: per-device batch x devices, always a multiple of the device count),
    ``jax_version``, ``reasons`` (``{setting: why}``, for printing).
    """
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    precision, precision_why = _precision(devices)
    per_device, batch_why = _batch_per_device(platform, _device_memory(jax.local_devices()[0]))
    count = len(devices)
    distribute = "data_parallel" if count > 1 else "none"
    distribute_why = (f"{count} devices ({jax.process_count()} process(es)): each batch is split over all of them"
                      if count > 1 else "one device: nothing to split")
    return {
        "platform": platform,
        "device_kind": devices[0].device_kind,
        "devices": count,
        "local_devices": jax.local_device_count(),
        "processes": jax.process_count(),
        "precision": precision,
        "distribute": distribute,
        "batch_size": per_device * count,
        "jax_version": jax.__version__,
        "reasons": {
            "precision": precision_why,
            "distribute": distribute_why,
            "batch_size": f"{batch_why}; x {count} device(s) = {per_device * count}",
        },
    }


def format_runtime(info: dict) -> str:
    """``describe_runtime()`` as the lines the notebook prints."""
    head = (f"runtime: {info['platform'].upper()} ({info['device_kind']}), {info['devices']} device(s) in "
            f"{info['processes']} process(es), jax {info['jax_version']}")
    lines = [head] + [f"  {key} = {info[key]!r}: {why}" for key, why in info["reasons"].items()]
    return "\n".join(lines)
