"""The shared layer harness of the model tests: config round trips, save/load, kernel-vs-stock equality.

Kernel-vs-stock compares one layer with itself: traced with the XLA:CPU kernels (``xla_cpu.kernels("auto")``)
and with the stock ops (``"stock"``), the path GPUs and TPUs take, with the same weights.
"""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import jax
import keras
import numpy as np

from keras_glacier import xla_cpu

#: Primitive names in a jaxpr that show a kernel of keras_glacier.xla_cpu ran (all of them use custom VJPs).
KERNEL_MARK = "custom_vjp_call"


def value_and_grads(layer, x, mode: str = "auto"):
    """Output, gradients (input first, then each trainable weight) of sum(sin(layer(x))), and the jaxpr,
    with the layer traced under kernel mode ``mode``."""
    weights = [v.value for v in layer.trainable_variables]

    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return jax.numpy.sum(jax.numpy.sin(y.astype("float32"))), y

    with xla_cpu.kernels(mode):
        (_, y), (g_weights, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(weights, x)
        jaxpr = str(jax.make_jaxpr(loss)(weights, x))
    return np.asarray(y), [np.asarray(g_x)] + [np.asarray(g) for g in g_weights], jaxpr


def assert_kernel_equals_stock(layer, x, rtol=1e-5, grad_rtol=1e-4):
    """The layer's XLA:CPU kernel really runs and gives the stock op's output and gradients; returns both jaxprs."""
    if not layer.built:
        layer.build(x.shape)
    y_fast, g_fast, jaxpr_fast = value_and_grads(layer, x, "auto")
    y_stock, g_stock, jaxpr_stock = value_and_grads(layer, x, "stock")
    assert KERNEL_MARK in jaxpr_fast, "no XLA:CPU kernel was taken on JAX CPU"
    assert KERNEL_MARK not in jaxpr_stock, "a kernel ran although the stock ops were asked for"
    np.testing.assert_allclose(y_fast, y_stock, rtol=rtol, atol=rtol)
    assert len(g_fast) == len(g_stock) == len(layer.trainable_weights) + 1
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, rtol=grad_rtol, atol=grad_rtol)
    return jaxpr_fast, jaxpr_stock


def assert_config_round_trip(layer, x=None):
    """``from_config(get_config())`` rebuilds an equal layer; with ``x``, one computing the same output."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer)
    if x is not None:
        y = np.asarray(layer(x))
        clone(x)
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(np.asarray(clone(x)), y)
    assert clone.get_config() == layer.get_config()
    return clone


def save_and_load(model, path):
    """``model`` saved as a .keras file and loaded back (custom classes resolved through registration)."""
    model.save(path)
    return keras.saving.load_model(path)


def assert_save_load(layer, inputs, path):
    """A one-layer model around ``layer`` survives save/load: same class, config and outputs."""
    if isinstance(inputs, list | tuple):
        symbolic = [keras.Input(batch_shape=i.shape, dtype=str(i.dtype)) for i in inputs]
        model = keras.Model(symbolic, layer(symbolic))
    else:
        symbolic = keras.Input(batch_shape=inputs.shape, dtype=str(inputs.dtype))
        model = keras.Model(symbolic, layer(symbolic))
    loaded = save_and_load(model, path)
    twin = loaded.get_layer(layer.name)
    assert type(twin) is type(layer)
    assert twin.get_config() == layer.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(model(inputs)))
    return loaded
