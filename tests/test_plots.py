"""Figures: no global matplotlib state, one colour per class, the normalised confusion matrix."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from keras_glacier import plots
from keras_glacier.constants import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]


def test_import_leaves_the_backend_alone(tmp_path):
    """A notebook's backend (here "svg" standing in for the inline one) survives importing plots and
    drawing a figure. (Keras itself imports pyplot, so plots.py's own source is checked for pyplot and
    backend switches below.)"""
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import keras_glacier.plots as plots\n"
        "plots.plot_curves({'loss': [1.0, 0.5], 'val_mcc': [0.2, 0.4]}, sys.argv[1])\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "curves.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    source = Path(plots.__file__).read_text()
    assert "import matplotlib.pyplot" not in source and "from matplotlib import pyplot" not in source
    assert "matplotlib.use(" not in source


def pixels_near(png, colour, tolerance=0.02):
    image = imread(png)[..., :3]
    return int(np.count_nonzero(np.all(np.abs(image - np.asarray(colour)) < tolerance, axis=-1)))


def test_multiclass_predictions_use_one_colour_per_class(tmp_path):
    names = ["background", "glacier", "debris", "lake"]
    truth = np.zeros((1, 32, 32), np.uint8)
    truth[0, :16] = 2  # debris
    truth[0, 16:, :8] = IGNORE_INDEX
    probabilities = np.zeros((1, 32, 32, 4), np.float32)
    probabilities[0, :, :16, 3] = 1.0  # lake predicted on the left half, background elsewhere
    probabilities[0, :, 16:, 0] = 1.0
    images = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 5)).astype(np.float32)
    path = plots.plot_predictions(images, truth, probabilities, tmp_path / "predictions.png", lo=[0] * 5,
                                  hi=[1] * 5, class_names=names)
    debris, lake = plots.CLASS_COLOURS["debris"], plots.CLASS_COLOURS["lake"]
    assert pixels_near(path, debris) > 100 and pixels_near(path, lake) > 100
    with pytest.raises(ValueError, match="3 class names for 4"):
        plots.plot_predictions(images, truth, probabilities, tmp_path / "x.png", [0] * 5, [1] * 5,
                               class_names=names[:3])
    # Binary stays as it was: no class colours.
    binary = plots.plot_predictions(images, np.minimum(truth, 1), probabilities[..., 3], tmp_path / "binary.png",
                                    lo=[0] * 5, hi=[1] * 5)
    assert pixels_near(binary, debris) == 0


def test_confusion_matrix_picture(tmp_path):
    path = plots.plot_confusion_matrix(np.array([[90, 10, 0], [5, 5, 0], [0, 0, 0]]), ["a", "b", "c"],
                                       tmp_path / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="shape"):
        plots.plot_confusion_matrix(np.zeros((2, 2)), ["a", "b", "c"], tmp_path / "bad.png")
