"""Figures a person looks at to judge a run: learning curves, prediction panels, confusion matrices.

Every figure is a ``matplotlib.figure.Figure`` drawn on its own Agg canvas, never through pyplot:
no global backend is chosen or needed, so importing this module (or training from a notebook)
leaves the notebook's inline backend alone, and servers without a display work all the same.
Figures are written through the one atomic-write helper, so an interrupted run never leaves a
truncated PNG behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.fileio import atomic_write

#: Display colour per class name (phase-2 names); other names take the tab10 colours in order.
CLASS_COLOURS = {
    "background": (0.10, 0.12, 0.16),
    "glacier": (0.80, 0.95, 1.00),
    "clean_ice": (0.80, 0.95, 1.00),
    "debris": (0.80, 0.50, 0.15),
    "lake": (0.10, 0.35, 0.95),
}
IGNORED_COLOUR = (0.45, 0.45, 0.45)
_TAB10 = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
          (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81))


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (pyplot's global state is never touched)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (temporary file, then rename)."""
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def plot_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Loss on the left, validation metrics on the right, one point per epoch."""
    fig = new_figure(11, 4)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key in ("loss", "val_loss"):
        if history.get(key):
            ax_loss.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    for key in ("val_mcc", "val_mean_iou", "val_iou", "val_f1", "val_r2", "mcc"):
        if history.get(key):
            ax_metric.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title("whole-set metrics")
    ax_metric.set_ylim(top=1.0)
    ax_metric.legend()
    return save_figure(fig, path)


def unit_rgb(image: np.ndarray, lo: Sequence[float], hi: Sequence[float], rgb: Sequence[int]) -> np.ndarray:
    """Raw bands -> displayable RGB in [0, 1], scaled by the run's robust percentiles."""
    lo = np.asarray(lo, dtype=np.float32)[list(rgb)]
    hi = np.asarray(hi, dtype=np.float32)[list(rgb)]
    rgb_img = (image[..., list(rgb)].astype(np.float32) - lo) / np.maximum(hi - lo, 1e-6)
    return np.clip(np.nan_to_num(rgb_img, nan=0.0), 0.0, 1.0)


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB panel: true positives white, false positives red, false negatives blue, ignored grey."""
    out = np.zeros(truth.shape + (3,), dtype=np.float32)
    valid = truth != IGNORE_INDEX
    t = (truth == 1) & valid
    p = (pred == 1) & valid
    out[t & p] = (1.0, 1.0, 1.0)
    out[~t & p & valid] = (0.9, 0.1, 0.1)
    out[t & ~p] = (0.1, 0.3, 0.95)
    out[~valid] = IGNORED_COLOUR
    return out


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """(K, 3) display colours: the phase-2 palette by name, tab10 for other names."""
    spare = iter(_TAB10)
    return np.array([CLASS_COLOURS.get(name) or next(spare) for name in class_names], dtype=np.float32)


def colour_classes(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB; IGNORE_INDEX (and anything out of range) grey."""
    labels = np.asarray(labels)
    known = labels < len(colours)
    out = np.empty(labels.shape + (3,), dtype=np.float32)
    out[...] = IGNORED_COLOUR
    out[known] = colours[labels[known].astype(np.int64)]
    return out


def multiclass_error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB panel: correct pixels dark, wrong class red, ignored grey."""
    out = np.full(truth.shape + (3,), 0.15, dtype=np.float32)
    valid = truth != IGNORE_INDEX
    out[valid & (truth != pred)] = (0.9, 0.1, 0.1)
    out[~valid] = IGNORED_COLOUR
    return out


def plot_predictions(
    images: np.ndarray,
    truths: np.ndarray,
    probabilities: np.ndarray,
    path: str | os.PathLike,
    lo: Sequence[float],
    hi: Sequence[float],
    rgb: Sequence[int] = (2, 1, 0),
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> Path:
    """One row per tile: bands as RGB, truth, prediction, errors.

    ``images`` are raw bands (N, H, W, C); ``truths`` (N, H, W) class indices with IGNORE_INDEX.
    Binary: ``probabilities`` (N, H, W) glacier probabilities, shown as a probability map, errors
    at ``threshold``. Multi-class: ``probabilities`` (N, H, W, K) class probabilities; truth and
    argmax prediction are drawn in one colour per class (``class_names``, default class_0..), with
    a legend. With fewer than three bands the first is shown as grey.
    """
    probabilities = np.asarray(probabilities)
    multiclass = probabilities.ndim == 4 and probabilities.shape[-1] > 1
    if probabilities.ndim == 4 and not multiclass:
        probabilities = probabilities[..., 0]
    if multiclass:
        k = probabilities.shape[-1]
        class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} probability channels")
        colours = class_colours(class_names)
    n = len(images)
    channels = images.shape[-1]
    rgb = tuple(rgb) if channels >= 3 and max(rgb) < channels else (0, 0, 0)
    fig = new_figure(12, 3 * n + (0.6 if multiclass else 0.0))
    axes = fig.subplots(n, 4, squeeze=False)
    for row in range(n):
        truth = np.asarray(truths[row])
        first = row == 0
        if multiclass:
            pred = probabilities[row].argmax(-1)
            panels = [
                (colour_classes(truth, colours), None, "truth (grey = ignored)" if first else None),
                (colour_classes(pred, colours), None, "prediction" if first else None),
                (multiclass_error_map(truth, pred), None, "errors (red = wrong class)" if first else None),
            ]
        else:
            prob = probabilities[row]
            shown_truth = np.where(truth == IGNORE_INDEX, 0.5, truth).astype(np.float32)
            panels = [
                (shown_truth, "gray", "truth (grey = ignored)" if first else None),
                (prob, "viridis", "probability" if first else None),
                (error_map(truth, (prob > threshold).astype(np.uint8)), None,
                 "errors (red FP, blue FN)" if first else None),
            ]
        panels.insert(0, (unit_rgb(images[row], lo, hi, rgb), None, "bands as RGB" if first else None))
        for col, (img, cmap, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if title:
                ax.set_title(title)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row])
    if multiclass:
        handles = [Patch(color=tuple(c), label=name) for c, name in zip(colours, class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    return save_figure(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """The confusion matrix normalised per true class (each row sums to 1: the recall on the diagonal),
    annotated with the percentage and the pixel count; rows without pixels stay empty."""
    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {k} class names")
    support = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    size = 1.6 + 1.1 * k
    fig = new_figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(k):
        for j in range(k):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            text = f"{100 * normalised[i, j]:.1f}%\n{matrix[i, j]:,}" if support[i, 0] else "-"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(k), labels=list(class_names), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (rows: true class)")
    return save_figure(fig, path)
