"""Starting the processes of a multi-process test and cleaning up after them (shared by the tests).

Each process gets its own virtual CPU devices (XLA_FLAGS), gloo collectives, this checkout on its
path and none of the cluster variables of the shell that runs the tests; it runs in a new session so
that a hung or failed job is killed with everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# XLA:CPU aborts the whole process when one device's thread reaches a collective 60 s after the other
# (20 s until its warning, 40 s more until the abort). On a loaded 2-core CI host several jobs share the
# cores, and one such stall killed a healthy one-process, two-device job in evaluate. A hang is still
# caught: wait_all's deadline (a few minutes) comes first and dumps every thread's stack.
COLLECTIVE_TIMEOUT_S = 600


def worker_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_DISTRIBUTION_", "SLURM_", "JAX_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                         f"--xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TIMEOUT_S}",
               KERAS_BACKEND="jax",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    return env


def start_logged(command: list[str], log: Path, devices: int = 1, cwd: Path = ROOT, **popen) -> subprocess.Popen:
    """``command`` in a new session with :func:`worker_env`; its stderr (and, unless ``popen`` says
    otherwise, its stdout) go to ``log``, which the child keeps open and this process closes."""
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, env=worker_env(devices), stdout=popen.pop("stdout", out),
                                stderr=out, start_new_session=True, **popen)


def start_module(module: str, args: list[str], devices: int, log: Path, cwd: Path = ROOT, **popen) -> subprocess.Popen:
    """``python -m module args`` with ``devices`` virtual CPU devices; stderr (and, unless ``popen``
    says otherwise, stdout) go to ``log``."""
    return start_logged([sys.executable, "-m", module, *args], log, devices, cwd, **popen)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout_s: float, expect: int | None = 0) -> None:
    """Waits for every process; on a timeout or a failure kills them all (their whole process groups).
    Fails the test when a process timed out or (with ``expect``) exited with another status. A process
    still running at the deadline is first sent SIGABRT, so that its log ends with where each of its
    threads was (faulthandler), which a rare hang in a collective can then be told from."""
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [proc for proc in procs if proc.poll() is None]
        for proc in hung:  # first the Python stacks of every thread into the log (PYTHONFAULTHANDLER)
            os.kill(proc.pid, signal.SIGABRT)
        for proc in hung:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    failed = [(log, proc.returncode, proc in hung) for proc, log in zip(procs, logs)
              if proc.returncode < 0 or (expect is not None and proc.returncode != expect)]
    if failed:
        # Every failed process's log, those that ended by themselves first: when one process dies, the
        # others wait for it in a collective until the deadline, and only its log says why.
        failed.sort(key=lambda item: item[2])
        pytest.fail("\n".join(f"{log.name} {'hung, killed at the deadline' if killed else 'exited'} with {code}:\n"
                              f"{readable_tail(log)}" for log, code, killed in failed))


def readable_tail(log: Path, limit: int = 6000) -> str:
    """The end of a process's log without faulthandler's list of loaded extension modules (one line of
    some 3000 characters that would push the threads' stacks out of the failure message)."""
    lines = log.read_text(errors="replace").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("Extension modules:"))[-limit:]
