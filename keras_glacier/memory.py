"""glibc allocator settings that keep freed memory in the process, and restarting under them.

XLA:CPU allocates one temporary buffer per execution of the training step (about 0.8 GB at batch 4
x 256x256) from a worker thread; glibc serves a block that large with a fresh ``mmap`` and unmaps
it on free, so every step page-faults the whole buffer in again (0.2-0.4 M minor faults, 0.3-0.5 s of
kernel time per step on 2 cores). With one arena, no ``mmap`` for large blocks and no trimming, the
buffer stays mapped and a CPU training step is 10-20 % faster (benchmarks/PERFORMANCE.md). The
cost: the process keeps its peak heap until it exits. The same three settings made with ``mallopt``
at run time work only while no XLA worker thread has allocated yet (each thread keeps the arena it
first got: measured 0 faults per step when set before the first JAX computation, 149 k when set
after it), so the command line applies them as environment variables before ``exec``, which holds
whatever the process did earlier. Other C libraries ignore them.
"""

from __future__ import annotations

import os
import sys

#: One arena for all threads, no ``mmap`` for large blocks, no trimming of the heap.
REUSE_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
ALLOCATORS = ("default", "reuse")


def allocator_mode(environ=None) -> str:
    """``"reuse"`` when the environment holds REUSE_MEMORY_ENV (as this process started), else ``"default"``."""
    environ = os.environ if environ is None else environ
    return "reuse" if all(environ.get(k) == v for k, v in REUSE_MEMORY_ENV.items()) else "default"


def allocator_environment(mode: str, environ=None) -> dict[str, str] | None:
    """The environment to restart under for ``mode``, or None when the current one already is it."""
    if mode not in ALLOCATORS:
        raise ValueError(f"allocator mode must be one of {ALLOCATORS}, got {mode!r}")
    environ = dict(os.environ if environ is None else environ)
    if allocator_mode(environ) == mode:
        return None
    for key in REUSE_MEMORY_ENV:
        environ.pop(key, None)
    if mode == "reuse":
        environ.update(REUSE_MEMORY_ENV)
    return environ


def restart_with_allocator(mode: str, module: str, argv: list[str]) -> None:
    """Re-executes ``python -m module argv`` under the allocator of ``mode`` unless already under it.

    Only where glibc reads the variables (Linux); elsewhere it returns and the process goes on.
    """
    env = allocator_environment(mode)
    if env is None or not sys.platform.startswith("linux"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


if __name__ == "__main__":  # `python -m keras_glacier.memory`: which allocator this process started with
    print(allocator_mode())
