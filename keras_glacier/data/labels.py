"""What the labels of a split hold: class fractions in one line, and the refusal of a split without glacier.

A wrong mask layout or task does not crash a run, it trains on the wrong thing: read as ``region``,
a one-hot HKH mask ignores every glacier pixel; read as multi-class, a 0/255 band-folder label is
all lake. Training therefore prints :meth:`LabelSummary.line` for its training split and calls
:meth:`LabelSummary.require_glacier` before fitting.

Labels are counted as the model sees them (``read_sample``: no-data pixels ignored too), over at
most ``max_tiles`` tiles spread over the split; while none of those has a glacier pixel the rest
is read as well, so the refusal is exact and a healthy split costs ``max_tiles`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.errors import InputError
from keras_glacier.data.layouts import describe_layout
from keras_glacier.data.sources import Sample, read_sample

#: Classes that are glacier ice, in any class set (binary, HKH, band folders).
GLACIER_CLASSES = ("glacier", "clean_ice", "debris")
MAX_TILES = 256


@dataclass(frozen=True)
class LabelSummary:
    """Pixel counts per class (in ``class_names`` order) and ignored, over ``tiles_read`` of ``tiles`` tiles."""

    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    ignored: int
    tiles_read: int
    tiles: int
    mask_layout: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts) + self.ignored

    @property
    def glacier_pixels(self) -> int:
        return sum(n for name, n in zip(self.class_names, self.counts) if name in GLACIER_CLASSES)

    def fractions(self) -> dict[str, float]:
        """Fraction of all pixels per class name, and ``"ignored"``."""
        total = max(1, self.total)
        return {**{n: c / total for n, c in zip(self.class_names, self.counts)}, "ignored": self.ignored / total}

    def line(self, what: str = "training split") -> str:
        """``training split labels (mask layout region ..., 12 of 12 tiles): glacier 31.0%, ...``."""
        layout = f"mask layout {describe_layout(self.mask_layout)}, " if self.mask_layout else ""
        parts = ", ".join(f"{name} {100 * share:.1f}%" for name, share in self.fractions().items())
        return f"{what} labels ({layout}{self.tiles_read} of {self.tiles} tiles): {parts}"

    def require_glacier(self, what: str = "training split") -> None:
        """Refuse (InputError) a split in which no pixel is glacier: it would train on nothing."""
        if self.glacier_pixels:
            return
        hint = "check --mask-layout and the mask files"
        if "lake" in self.class_names and self.counts[self.class_names.index("lake")]:
            hint = "labels 0/255 only are binary labels: use --task binary"
        raise InputError(f"no glacier pixel in the {what}: {self.line(what)}; {hint}")


def label_summary(
    samples: Sequence[Sample], bands: Sequence[int], class_names: Sequence[str], mask_layout: str | None = None,
    max_tiles: int = MAX_TILES,
) -> LabelSummary:
    """Count the labels of ``samples`` (read with ``bands``, which decide the no-data pixels); see the module."""
    class_names = tuple(class_names)
    if not samples:
        raise InputError("no samples to count labels of")
    count = min(len(samples), max(1, max_tiles))
    first = sorted({int(i) for i in np.linspace(0, len(samples) - 1, count)})
    order = first + [i for i in range(len(samples)) if i not in set(first)]
    counts = np.zeros(256, np.int64)
    read = 0
    for position, index in enumerate(order):
        sample = samples[index]
        _, label = read_sample(sample, bands)
        if label is None:
            raise InputError(f"{sample.image_paths[0]}: no label file")
        counts += np.bincount(label.ravel(), minlength=256)
        read += 1
        glacier = sum(counts[k] for k, name in enumerate(class_names) if name in GLACIER_CLASSES)
        if position + 1 >= len(first) and glacier:
            break
    known = len(class_names)
    unexpected = np.flatnonzero(counts[known:IGNORE_INDEX]) + known
    if unexpected.size:
        raise ValueError(f"label values {unexpected.tolist()} beyond the {known} classes {class_names}")
    return LabelSummary(
        class_names, tuple(int(c) for c in counts[:known]), int(counts[IGNORE_INDEX]), read, len(samples), mask_layout
    )
