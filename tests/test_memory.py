"""The allocator restart of the training job (keras_glacier.memory)."""

import os
import subprocess
import sys

import pytest

from keras_glacier.memory import REUSE_MEMORY_ENV, allocator_environment, allocator_mode


def test_allocator_mode_needs_every_setting():
    assert allocator_mode({}) == "default"
    assert allocator_mode(dict(REUSE_MEMORY_ENV)) == "reuse"
    assert allocator_mode({**REUSE_MEMORY_ENV, "MALLOC_ARENA_MAX": "4"}) == "default"


def test_allocator_environment():
    assert allocator_environment("reuse", dict(REUSE_MEMORY_ENV)) is None
    assert allocator_environment("default", {"PATH": "/bin"}) is None
    assert allocator_environment("reuse", {"PATH": "/bin"}) == {"PATH": "/bin", **REUSE_MEMORY_ENV}
    assert allocator_environment("default", {"PATH": "/bin", **REUSE_MEMORY_ENV}) == {"PATH": "/bin"}
    with pytest.raises(ValueError, match="allocator mode"):
        allocator_environment("jemalloc", {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: the restart is Linux-only")
@pytest.mark.parametrize("mode,start_env", [("reuse", {}), ("default", REUSE_MEMORY_ENV)])
def test_restart_execs_under_the_requested_allocator(mode, start_env):
    env = {k: v for k, v in os.environ.items() if k not in REUSE_MEMORY_ENV}
    env.update(start_env)
    code = f"from keras_glacier.memory import restart_with_allocator; restart_with_allocator({mode!r}, " \
           "'keras_glacier.memory', []); print('not restarted')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mode
