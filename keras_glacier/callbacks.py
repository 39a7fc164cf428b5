"""Training callbacks that keras does not ship: the averaged weights swapped in, figures written as the run
goes, a diverged run stopped."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import keras
import numpy as np

from keras_glacier.errors import UsageError
from keras_glacier.plots import plot_curves, plot_predictions


def read_history(csv_path) -> dict[str, list[float]] | None:
    """The per-epoch columns of a CSVLogger file (non-numeric cells skipped), or None if it has no rows."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return None
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    history = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            try:
                history[key].append(float(value))
            except (TypeError, ValueError):
                continue
    return history


class FigureWriter(keras.callbacks.Callback):
    """Writes ``curves.png`` and ``predictions.png`` into the run folder after every epoch.

    Writing each epoch (not only at the end) means a run that is stopped early, killed, or still
    going on a Colab TPU can be judged by opening two files. The history is re-read from the CSV
    log when one exists so that a resumed run draws its whole history, not only the epochs since
    the restart.
    """

    def __init__(self, run_dir, val_images, val_truths, lo, hi, csv_log=None, class_names=None):
        super().__init__()
        self.class_names = list(class_names) if class_names else None
        self.run_dir = Path(run_dir)
        self.val_images = np.asarray(val_images, dtype=np.float32)
        self.val_truths = np.asarray(val_truths)
        self.lo = list(lo)
        self.hi = list(hi)
        self.csv_log = Path(csv_log) if csv_log else None
        self.history = defaultdict(list)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history[key].append(float(value))
        history = read_history(self.csv_log) if self.csv_log else None
        history = history or self.history
        plot_curves(history, self.run_dir / "curves.png")
        self.write_predictions()

    def write_predictions(self, path=None):
        logits = np.asarray(self.model.predict(self.val_images, batch_size=len(self.val_images), verbose=0),
                            dtype=np.float32)
        if self.class_names is None:  # binary: one logit, the glacier probability
            probs = 0.5 + 0.5 * np.tanh(0.5 * logits[..., 0])  # the sigmoid, without exp's overflow at -100
        else:  # K logits: softmax over the classes, drawn one colour per class
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
        plot_predictions(self.val_images, self.val_truths, probs, path or self.run_dir / "predictions.png",
                         self.lo, self.hi, class_names=self.class_names,
                         threshold=float(getattr(self.model, "threshold", 0.5)))


class AveragedWeights(keras.callbacks.Callback):
    """Puts the optimiser's moving average of the weights into the model for validation and for the
    callbacks after this one at the end of each epoch (checkpoint, early stopping, figures), and
    the raw weights back before the next epoch trains (keras_glacier.training.optimizer says why).

    Four swaps an epoch, not two: the resume backup (the callback before this one) must save the
    raw weights at the epoch's end, so validation puts the raw weights back when it ends.

    Keras' ``SwapEMAWeights`` does the same through host memory (``convert_to_numpy``), which a
    job of several processes cannot do with arrays that span all of them; the swap here stays
    with the arrays where they are.
    """

    def __init__(self):
        super().__init__()
        self.averaged_in_model = False
        self.swapped_for_test = False

    def pairs(self):
        optimizer = self.model.optimizer
        if not getattr(optimizer, "use_ema", False):
            raise ValueError("AveragedWeights needs an optimizer with use_ema=True")
        return zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)

    def swap(self) -> None:
        for var, average in self.pairs():
            raw = var.value
            var.assign(average.value)
            average.assign(raw)
        self.averaged_in_model = not self.averaged_in_model

    def on_epoch_begin(self, epoch, logs=None):
        if self.averaged_in_model:
            self.swap()

    def on_test_begin(self, logs=None):
        self.swapped_for_test = not self.averaged_in_model
        if self.swapped_for_test:
            self.swap()

    def on_test_end(self, logs=None):
        if self.swapped_for_test:
            self.swap()
            self.swapped_for_test = False

    def on_epoch_end(self, epoch, logs=None):
        if not self.averaged_in_model:
            self.swap()


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Ends a run whose training loss became NaN or infinite, with one line naming the epoch and --lr.

    Why: a diverged network's probabilities are NaN, which every threshold turns into background, so
    the run would otherwise save, export and score a model that writes empty masks. Keras'
    ``TerminateOnNaN`` only stops training, and the run goes on to save. Checked at each epoch's end,
    where the epoch's mean loss is already a number (a check every step would wait for each step).
    First among the run's callbacks, so the backup, the checkpoint and the history never keep that epoch.
    """

    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise UsageError(f"training diverged: the loss was {float(loss)} in epoch {epoch + 1}, and nothing of "
                             f"that epoch was kept; train again at a lower --lr (this run: {self.lr:g})")
