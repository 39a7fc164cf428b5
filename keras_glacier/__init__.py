"""keras-glacier: glacier segmentation of multispectral tiles with Keras 3 on JAX.

Importing the package selects the JAX backend for Keras when the user has not chosen one
(``KERAS_BACKEND``), because the training step is written and tuned for XLA-compiled JAX.
This has to happen before the first ``import keras`` anywhere in the process.
"""

import os

if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = "jax"

__version__ = "0.1.0"

#: The Python API, loaded on first use so that ``import keras_glacier`` stays light.
_LAZY = {
    "TrainConfig": ("keras_glacier.training.config", "TrainConfig"),
    "RunResult": ("keras_glacier.training.run_folder", "RunResult"),
    "Segmenter": ("keras_glacier.segmenter", "Segmenter"),
    "convert_model": ("keras_glacier.segmenter", "convert_model"),
}


def __getattr__(name):
    import importlib

    if name == "train":  # the module keras_glacier.train is callable: keras_glacier.train(config)
        return importlib.import_module("keras_glacier.train")
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
