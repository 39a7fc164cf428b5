"""Whether the model layers call the XLA:CPU kernels of this package or the stock Keras ops.

The kernels only help XLA:CPU; on GPU and TPU the stock ops run. ``KERAS_GLACIER_KERNELS=stock``
(or :func:`set_kernels` / :func:`kernels`) makes a CPU run take the stock path too, so the
accelerator path can be trained, saved, converted and checked on a laptop. The choice is read
when a layer's call is traced, so set it before a model is first called or compiled: a function
that Keras or JAX has already compiled keeps the ops it was traced with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["KERNELS_ENV", "MODES", "enabled", "kernels", "kernels_mode", "on_xla_cpu", "set_kernels"]

#: The environment variable that chooses the kernels: "auto" (default) or "stock".
KERNELS_ENV = "KERAS_GLACIER_KERNELS"
#: "auto": this package's kernels on XLA:CPU, the stock ops elsewhere; "stock": the stock ops everywhere.
MODES = ("auto", "stock")

_override: str | None = None


def _checked(mode: str, source: str) -> str:
    value = str(mode).strip().lower()
    if value not in MODES:
        raise ValueError(f"{source}={mode!r} is not a kernel mode (use one of: {', '.join(MODES)})")
    return value


def kernels_mode() -> str:
    """The mode in force: the one set by :func:`set_kernels` / :func:`kernels`, else the environment's."""
    if _override is not None:
        return _override
    value = os.environ.get(KERNELS_ENV, "").strip()
    return _checked(value, KERNELS_ENV) if value else "auto"


def set_kernels(mode: str | None) -> None:
    """Sets the mode for this process ("auto" or "stock"); None goes back to the environment variable."""
    global _override
    _override = None if mode is None else _checked(mode, "kernel mode")


@contextlib.contextmanager
def kernels(mode: str) -> Iterator[None]:
    """``with kernels("stock"): ...`` builds and traces models with the given mode, then restores the previous one."""
    global _override
    previous = _override
    set_kernels(mode)
    try:
        yield
    finally:
        _override = previous


def on_xla_cpu() -> bool:
    """Whether the graph being traced will run through XLA:CPU (Keras on JAX, JAX's default backend the CPU)."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def enabled() -> bool:
    """Whether a layer traced now should call this package's kernels: mode "auto" and on XLA:CPU."""
    return kernels_mode() == "auto" and on_xla_cpu()
