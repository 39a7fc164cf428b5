"""keras-glacier: glacier segmentation of multispectral tiles with Keras 3 on JAX.

Importing the package selects the JAX backend for Keras when the user has not chosen one
(``KERAS_BACKEND``), because the training step is written and tuned for XLA-compiled JAX.
This has to happen before the first ``import keras`` anywhere in the process.

It then registers the model's classes (layers, ``GlacierDeepLab``, the loss and the metrics) with
Keras, so ``import keras_glacier`` is all ``keras.saving.load_model("model.keras")`` needs.
"""

import os

if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = "jax"

__version__ = "0.1.0"

# isort: split
# Imported for their registration with keras.saving (after the backend choice above).
from keras_glacier import losses, metrics, model  # noqa: E402, F401
from keras_glacier.model import GlacierDeepLab  # noqa: E402

__all__ = ["GlacierDeepLab", "RunResult", "Segmenter", "TrainConfig", "__version__", "convert_model", "train"]

#: The Python API of the jobs, loaded on first use (training pulls in the loader, plots and convert).
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
