"""Keras vs PyTorch parity of a K-class model, through convert and solution.load_model.

NEEDS THE MODEL BRANCH: it builds the Keras side with the multi-class head of
``keras_glacier.model.build_deeplab(num_bands=..., task="multiclass", class_names=[...])`` (the
GlacierDeepLab class with get_config). Before that API is merged the test fails with a message
saying so; it is never skipped.
"""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import inspect

import keras
import numpy as np
import pytest
import torch

import solution
from convert.export import convert_model, keras_logits, model_config, probe_batch, torch_logits
from convert.parity import randomize_weights
from keras_glacier.model import build_deeplab

STATS = {"lo": [0.0, 10.0, 20.0], "hi": [100.0, 200.0, 400.0], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
CLASSES = ["background", "clean_ice", "debris"]


@pytest.fixture(scope="module")
def keras_model():
    try:
        model = build_deeplab(num_bands=3, stats=STATS, task="multiclass", class_names=CLASSES,
                              band_names=["B1", "B2", "B3"])
    except TypeError as exc:
        signature = inspect.signature(build_deeplab)
        pytest.fail(f"needs the model branch (multi-class build_deeplab); build_deeplab{signature}: {exc}")
    randomize_weights(model, seed=7)
    # Centre each class's logits (randomize_weights centres them together), so that every class wins
    # somewhere and the argmax comparison means something.
    head = model.get_layer("head")
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w)) for w in (head.kernel, head.bias))
    logits = keras_logits(model, probe_batch(model, (1, 64, 64), seed=1))
    head.set_weights([kernel, bias - np.median(logits.reshape(-1, logits.shape[-1]), axis=0)])
    return model


def test_k_class_logits_and_argmax_match_after_conversion(keras_model, tmp_path):
    config = model_config(keras_model)
    assert config["task"] == "multiclass" and config["class_names"] == CLASSES
    assert config["band_names"] == ["B1", "B2", "B3"] and "stats" not in config

    out = tmp_path / "model.pth"
    report = convert_model(keras_model, out)
    assert report.task == "multiclass" and report.class_names == tuple(CLASSES)
    assert report.max_abs_diff <= 1e-4 and report.mask_agreement == 1.0

    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier/1" and content["config"]["class_names"] == CLASSES
    loaded = solution.load_model(out, "cpu")
    assert loaded.head.out_channels == 3 and loaded.config["class_values"] == [0, 85, 170]

    batch = probe_batch(keras_model, (2, 64, 64), seed=9)
    reference = keras_logits(keras_model, batch)
    logits = torch_logits(loaded, batch)
    assert reference.shape == logits.shape == (2, 64, 64, 3)
    assert np.abs(reference - logits).max() <= 1e-4
    np.testing.assert_array_equal(np.argmax(reference, -1), np.argmax(logits, -1))
    assert len(np.unique(np.argmax(reference, -1))) == 3  # every class occurs: the argmax is tested
