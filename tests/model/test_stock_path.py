"""The accelerator path on CPU: with ``KERAS_GLACIER_KERNELS=stock`` the network runs the stock Keras ops,
as on GPU and TPU, and is trained, saved, loaded by a fresh process that only imports keras_glacier,
and converted to PyTorch with parity; under mixed_bfloat16 too, keeping normalisation, statistics,
logits and loss in float32."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import os
import subprocess
import sys
from pathlib import Path

import jax
import keras
import numpy as np
import pytest

from convert.export import build_torch_module, convert_model, model_config, probe_batch, torch_state_dict
from convert.parity import STAGES, randomize_weights, stage_differences
from keras_glacier import xla_cpu
from keras_glacier.losses import BceDiceLoss
from keras_glacier.metrics import segmentation_metrics
from keras_glacier.model import GlacierDeepLab, build_deeplab
from tests.model.harness import KERNEL_MARK
from convert.parity import PROBE_STATS as STATS

REPO = Path(__file__).resolve().parents[2]
STAGE_RELATIVE_TOLERANCE = 1e-5

pytestmark = pytest.mark.filterwarnings(
    # Keras 3.15's Variable.__array__ predates numpy 2's copy keyword; saving converts every variable.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _tiny_batch(seed=0):
    """2 tiles of 32x32x5 raw bands with labels 0/1 and an ignored (255) stripe."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 5000.0, size=(2, 32, 32, 5)).astype("float32")
    y = (x[..., :1] > 2500).astype("float32")
    y[:, :4] = 255
    return x, y


def _train_two_steps(model):
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=BceDiceLoss(), metrics=segmentation_metrics(),
                  jit_compile=True)  # fmt: skip
    x, y = _tiny_batch()
    logs = [model.train_on_batch(x, y, return_dict=True) for _ in range(2)]
    assert np.isfinite([log["loss"] for log in logs]).all()
    return logs


def _forward_jaxpr(model, x) -> str:
    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    values = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    return str(jax.make_jaxpr(forward)(*values, x))


@pytest.fixture(scope="module")
def stock_model():
    """Trained two steps through the stock ops, then given random non-trivial weights for the comparisons."""
    with xla_cpu.kernels("stock"):
        keras.utils.set_random_seed(0)
        model = build_deeplab(5, stats=STATS)
        _train_two_steps(model)
        randomize_weights(model, seed=3)
        yield model


def test_stock_switch_runs_only_stock_ops(stock_model):
    x = _tiny_batch()[0]
    with xla_cpu.kernels("stock"):
        jaxpr = _forward_jaxpr(stock_model, x)
    assert KERNEL_MARK not in jaxpr and "conv_general_dilated" in jaxpr and "reduce_window" in jaxpr


def test_saved_files_load_in_a_fresh_process(stock_model, tmp_path):
    """``import keras_glacier`` is all load_model needs, for a GlacierDeepLab file and for an old
    file of the network saved as a plain functional keras.Model."""
    x = probe_batch(stock_model, (1, 32, 32))
    with xla_cpu.kernels("stock"):
        expected = np.asarray(stock_model(x, training=False))
    stock_model.threshold = 0.42
    try:
        stock_model.save(tmp_path / "new.keras")
    finally:
        stock_model.threshold = 0.5
    old = keras.Model(stock_model.inputs, stock_model.outputs, name="attention_deeplabv3plus")
    old.save(tmp_path / "old.keras")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import keras_glacier, keras\n"
        "import numpy as np, sys\n"
        "x = np.load(sys.argv[1] + '/x.npy')\n"
        "for name in ('new', 'old'):\n"
        "    model = keras.saving.load_model(f'{sys.argv[1]}/{name}.keras')\n"
        "    np.save(f'{sys.argv[1]}/{name}.npy', np.asarray(model(x, training=False)))\n"
        "    print(name, type(model).__name__, getattr(model, 'threshold', None))\n"
    )
    env = {**os.environ, xla_cpu.KERNELS_ENV: "stock"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["new", "GlacierDeepLab", "0.42", "old", "Functional", "None"]
    for name in ("new", "old"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected)


def test_stock_path_matches_pytorch(stock_model, tmp_path):
    with xla_cpu.kernels("stock"):
        module = build_torch_module(model_config(stock_model))
        module.load_state_dict(torch_state_dict(stock_model, module), strict=True)
        rows = stage_differences(stock_model, module, probe_batch(stock_model, (2, 64, 64), seed=7))
        report = convert_model(stock_model, tmp_path / "model.pth")
    assert [row["stage"] for row in rows] == [*STAGES, "logits"]
    for row in rows:
        assert row["max_abs_value"] > 1e-3, f"stage {row['stage']} is all ~zero: a vacuous comparison"
        assert row["max_abs_diff"] <= STAGE_RELATIVE_TOLERANCE * max(1.0, row["max_abs_value"]), row
    assert report.max_abs_diff <= 1e-4 and report.mask_agreement >= 0.999
    assert not report.notes


def test_mixed_bfloat16_through_the_stock_path_keeps_float32_where_it_matters(tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        with xla_cpu.kernels("stock"):
            keras.utils.set_random_seed(1)
            model = build_deeplab(5, stats=STATS)
            assert isinstance(model, GlacierDeepLab)
            logs = _train_two_steps(model)
            x = _tiny_batch(1)[0]
            jaxpr = _forward_jaxpr(model, x)
            logits = model(x, training=False)
    finally:
        keras.config.set_dtype_policy(previous)
    assert KERNEL_MARK not in jaxpr and "bf16" in jaxpr
    assert model.get_layer("backbone").get_layer("conv1").compute_dtype == "bfloat16"  # the policy took
    normalize = model.get_layer("normalize")
    assert normalize.compute_dtype == "float32" and normalize.output.dtype == "float32"
    assert {v.dtype for v in normalize.weights} == {"float32"}
    assert {v.dtype for v in model.weights} == {"float32"}  # BatchNorm statistics and every weight
    assert model.output.dtype == "float32" and logits.dtype == "float32"
    assert model.loss.dtype == "float32" and isinstance(logs[-1]["loss"], float)
    with xla_cpu.kernels("stock"):
        randomize_weights(model, seed=4)
        report = convert_model(model, tmp_path / "model.pth")
    assert report.max_abs_diff <= 1e-4 and report.mask_agreement >= 0.999
    assert any("float32 equivalent" in note for note in report.notes)
