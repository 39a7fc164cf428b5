"""Training callbacks that keras does not ship: figures written as the run goes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import keras
import numpy as np

from keras_glacier.plots import plot_curves, plot_predictions


class FigureWriter(keras.callbacks.Callback):
    """Writes ``curves.png`` and ``predictions.png`` into the run folder after every epoch.

    Writing each epoch (not only at the end) means a run that is stopped early, killed, or still
    going on a Colab TPU can be judged by opening two files. The history is re-read from the CSV
    log when one exists so that a resumed run draws its whole history, not only the epochs since
    the restart.
    """

    def __init__(self, run_dir, val_images, val_truths, lo, hi, csv_log=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.val_images = np.asarray(val_images, dtype=np.float32)
        self.val_truths = np.asarray(val_truths)
        self.lo = list(lo)
        self.hi = list(hi)
        self.csv_log = Path(csv_log) if csv_log else None
        self.history = defaultdict(list)

    def _read_csv_history(self):
        history = defaultdict(list)
        if self.csv_log is None or not self.csv_log.exists():
            return None
        lines = self.csv_log.read_text().strip().splitlines()
        if len(lines) < 2:
            return None
        header = lines[0].split(",")
        for line in lines[1:]:
            for key, value in zip(header, line.split(",")):
                try:
                    history[key].append(float(value))
                except ValueError:
                    continue
        return history

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history[key].append(float(value))
        history = self._read_csv_history() or self.history
        plot_curves(history, self.run_dir / "curves.png")
        self.write_predictions()

    def write_predictions(self, path=None):
        logits = self.model.predict(self.val_images, batch_size=len(self.val_images), verbose=0)
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32)[..., 0]))
        plot_predictions(self.val_images, self.val_truths, probs,
                         path or self.run_dir / "predictions.png", self.lo, self.hi)
