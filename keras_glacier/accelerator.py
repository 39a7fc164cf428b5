"""What the devices JAX sees are good at: the precision policy ``--precision auto`` picks.

bfloat16 has float32's exponent range, so mixed_bfloat16 training needs no loss scaling; it pays
where the hardware multiplies bfloat16 natively: TPUs, and NVIDIA GPUs from Ampere on (compute
capability 8.0). Older GPUs and CPUs would only emulate it, so they train in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BF16_MIN_COMPUTE_CAPABILITY", "auto_precision"]

#: The first NVIDIA compute capability with native bfloat16 matrix units (Ampere, A100).
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)


def _compute_capability(device) -> tuple[int, int] | None:
    """(major, minor) of a GPU device ("8.0", "9.0", or a tuple), None when it does not say."""
    value = getattr(device, "compute_capability", None)
    if value is None:
        return None
    try:
        parts = value.split(".") if isinstance(value, str) else list(value)
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (TypeError, ValueError, IndexError):
        return None


def auto_precision(devices: Sequence | None = None) -> tuple[str, str]:
    """(Keras dtype policy, reason) for ``devices`` (default: ``jax.devices()``), all of which will train.

    "mixed_bfloat16" when every device is a TPU or a GPU of compute capability >= 8.0, else "float32";
    the reason names the devices and why, for the user to read.
    """
    if devices is None:
        import jax

        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("no devices to choose a precision for")
    platforms = {str(getattr(device, "platform", "unknown")).lower() for device in devices}
    kinds = ", ".join(sorted({str(getattr(d, "device_kind", "") or getattr(d, "platform", "?")) for d in devices}))
    count = f"{len(devices)} device(s) ({kinds})"
    if platforms == {"tpu"}:
        return "mixed_bfloat16", f"{count}: TPUs compute bfloat16 natively"
    if platforms == {"gpu"}:
        capabilities = [_compute_capability(device) for device in devices]
        if None in capabilities:
            return "float32", f"{count}: a GPU does not report its compute capability, so bfloat16 support is unknown"
        oldest = min(capabilities)
        if oldest >= BF16_MIN_COMPUTE_CAPABILITY:
            return "mixed_bfloat16", (
                f"{count}: GPUs of compute capability {oldest[0]}.{oldest[1]} (>= 8.0) compute bfloat16 natively"
            )
        return "float32", f"{count}: compute capability {oldest[0]}.{oldest[1]} < 8.0 has no native bfloat16"
    if platforms == {"cpu"}:
        return "float32", f"{count}: CPUs only emulate bfloat16, so it would be slower and less accurate"
    return "float32", f"{count}: mixed platforms ({', '.join(sorted(platforms))}); float32 is safe on all"
