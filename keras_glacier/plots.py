"""Figures a person looks at to judge a run: learning curves and prediction panels.

Matplotlib runs headless (Agg) because training happens on servers and Colab alike, and every figure
is written to a temporary name first so an interrupted run never leaves a truncated PNG behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_glacier.constants import IGNORE_INDEX  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically (temporary file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Loss on the left, validation metrics on the right, one point per epoch."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "val_loss"):
        if history.get(key):
            ax_loss.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("BCE + Dice loss")
    ax_loss.legend()
    for key in ("val_mcc", "val_iou", "val_f1", "val_r2", "mcc"):
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
    out[~valid] = (0.45, 0.45, 0.45)
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
) -> Path:
    """One row per tile: bands as RGB, truth, predicted probability, errors at threshold 0.5.

    ``images`` are raw bands (N, H, W, C); ``truths`` (N, H, W) with 0/1/IGNORE_INDEX;
    ``probabilities`` (N, H, W) in [0, 1]. With fewer than three bands the first is shown as grey.
    """
    n = len(images)
    channels = images.shape[-1]
    rgb = tuple(rgb) if channels >= 3 and max(rgb) < channels else (0, 0, 0)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for row in range(n):
        truth = truths[row]
        prob = probabilities[row]
        shown_truth = np.where(truth == IGNORE_INDEX, 0.5, truth).astype(np.float32)
        panels = [
            (unit_rgb(images[row], lo, hi, rgb), None, "bands as RGB" if row == 0 else None),
            (shown_truth, "gray", "truth (grey = ignored)" if row == 0 else None),
            (prob, "viridis", "probability" if row == 0 else None),
            (error_map(truth, (prob > 0.5).astype(np.uint8)), None,
             "errors (red FP, blue FN)" if row == 0 else None),
        ]
        for col, (img, cmap, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if title:
                ax.set_title(title)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row])
    return save_figure(fig, path)
