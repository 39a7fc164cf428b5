"""Keras <-> PyTorch conversion of the keras-glacier DeepLab: one name map, both directions.

``python -m convert RUN_DIR [RUN_DIR ...] -o model.pth`` writes the model.pth that solution.py loads:
its configuration beside its weights, or an ensemble of several runs.
"""

import keras_glacier  # noqa: F401  (selects the Keras backend before any submodule imports keras)

# isort: split

from convert.export import (
    ConversionInputError,
    ConversionReport,
    convert_model,
    convert_models,
    load_keras_model,
)
from convert.name_map import ConversionError, check_against, keras_to_torch_state_dict, torch_to_keras
from convert.pretrained import adapt_stem, load_torchvision_resnet, resolve_pretrained

__all__ = [
    "ConversionError",
    "ConversionInputError",
    "ConversionReport",
    "adapt_stem",
    "check_against",
    "convert_model",
    "convert_models",
    "keras_to_torch_state_dict",
    "load_keras_model",
    "load_torchvision_resnet",
    "resolve_pretrained",
    "torch_to_keras",
]
