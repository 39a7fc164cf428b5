"""keras-glacier: glacier segmentation of multispectral tiles with Keras 3 on JAX.

Importing the package selects the JAX backend for Keras when the user has not chosen one
(``KERAS_BACKEND``), because the training step is written and tuned for XLA-compiled JAX.
This has to happen before the first ``import keras`` anywhere in the process.
"""

import os

if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = "jax"

__version__ = "0.1.0"
