"""The kernel switch (``KERAS_GLACIER_KERNELS`` / ``xla_cpu.kernels``) and ``accelerator.auto_precision``."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

from types import SimpleNamespace

import pytest

from keras_glacier import xla_cpu
from keras_glacier.accelerator import auto_precision


def test_environment_variable_chooses_the_kernels(monkeypatch):
    monkeypatch.delenv(xla_cpu.KERNELS_ENV, raising=False)
    assert xla_cpu.kernels_mode() == "auto"
    assert xla_cpu.enabled()  # these tests run on JAX's CPU backend
    monkeypatch.setenv(xla_cpu.KERNELS_ENV, "stock")
    assert xla_cpu.kernels_mode() == "stock" and not xla_cpu.enabled()
    monkeypatch.setenv(xla_cpu.KERNELS_ENV, " Auto ")
    assert xla_cpu.enabled()
    monkeypatch.setenv(xla_cpu.KERNELS_ENV, "fast")
    expected = r"KERAS_GLACIER_KERNELS='fast' is not a kernel mode \(use one of: auto, stock\)"
    with pytest.raises(ValueError, match=expected):
        xla_cpu.enabled()


def test_setter_and_context_manager_override_the_environment(monkeypatch):
    monkeypatch.setenv(xla_cpu.KERNELS_ENV, "stock")
    with xla_cpu.kernels("auto"):
        assert xla_cpu.enabled()
        with xla_cpu.kernels("stock"):
            assert not xla_cpu.enabled()
        assert xla_cpu.enabled()
    assert not xla_cpu.enabled()
    try:
        xla_cpu.set_kernels("auto")
        assert xla_cpu.kernels_mode() == "auto"
    finally:
        xla_cpu.set_kernels(None)
    assert xla_cpu.kernels_mode() == "stock"
    with pytest.raises(ValueError, match="not a kernel mode"):
        xla_cpu.set_kernels("gpu")


def _gpu(capability, kind="NVIDIA GPU"):
    return SimpleNamespace(platform="gpu", device_kind=kind, compute_capability=capability)


@pytest.mark.parametrize(
    "devices,policy,reason",
    [
        ([SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")] * 4, "mixed_bfloat16", "TPU"),
        ([_gpu("9.0", "NVIDIA H200")], "mixed_bfloat16", "9.0 (>= 8.0)"),
        ([_gpu("8.0", "NVIDIA A100")] * 2, "mixed_bfloat16", "8.0 (>= 8.0)"),
        ([_gpu("7.5", "Tesla T4")], "float32", "7.5 < 8.0"),
        ([_gpu("9.0"), _gpu("7.0")], "float32", "7.0 < 8.0"),  # the oldest GPU decides
        ([_gpu(None)], "float32", "does not report"),
        ([SimpleNamespace(platform="cpu", device_kind="cpu")] * 8, "float32", "CPUs only emulate"),
        ([SimpleNamespace(platform="cpu"), _gpu("9.0")], "float32", "mixed platforms"),
    ],
    ids=["tpu", "h200", "a100", "t4", "mixed-gpus", "unknown-gpu", "cpu", "cpu-and-gpu"],
)
def test_auto_precision(devices, policy, reason):
    chosen, why = auto_precision(devices)
    assert chosen == policy
    assert reason in why and f"{len(devices)} device(s)" in why


def test_auto_precision_of_this_machine_and_of_nothing():
    assert auto_precision()[0] == "float32"  # the test suite runs on JAX's CPU backend
    with pytest.raises(ValueError, match="no devices"):
        auto_precision([])
