import keras_glacier  # noqa: F401  (selects the JAX backend before any test imports keras)
