"""The figure callback turns logits into probabilities without numpy warnings, however confident the model."""

import warnings

import keras
import numpy as np

from keras_glacier import callbacks


def test_predictions_figure_takes_saturated_logits_quietly(tmp_path, monkeypatch):
    """A confident model gives logits of +-1000; the sigmoid must give exactly 0 and 1, not an exp overflow."""
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(1, 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1), 1000.0, np.float32), np.zeros(1, np.float32)])
    images = np.where(np.arange(64).reshape(1, 8, 8, 1) % 2, 1.0, -1.0).astype(np.float32)
    drawn = {}
    monkeypatch.setattr(callbacks, "plot_predictions",
                        lambda images, truths, probs, path, *args, **kwargs: drawn.update(probs=probs, path=path))
    writer = callbacks.FigureWriter(tmp_path, images, np.zeros((1, 8, 8), np.uint8), lo=[-1.0], hi=[1.0])
    writer.set_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writer.write_predictions()
    np.testing.assert_array_equal(drawn["probs"], (images[..., 0] > 0).astype(np.float32))
    assert drawn["path"] == tmp_path / "predictions.png"
