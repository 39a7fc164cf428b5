"""Whole-scene probabilities a strip of windows at a time, blended exactly as one ``predict_tiles`` call would.

``solution.predict_tiles`` blends overlapping windows with separable weights ``r(y) * r(x)``
(``blend_weights``) and divides by their sum. Fed one strip (a row of windows, the scene's full
width), it returns ``s_i = sum_j p_ij r_j(x) / sum_j r_j(x)``: the vertical ramp cancels inside a
strip. Cross-fading the strips with the vertical ramp ``R_i(y)`` then gives
``sum_i R_i s_i / sum_i R_i``, which equals the whole-scene blend because every strip has the same
column windows (the horizontal sums do not depend on ``i``). So the scene is never held whole: a
strip is read, predicted, blended into a carry-over of the overlap rows, and the rows no later
strip touches are handed on, finished. The window grid is the whole scene's (starts from
``window_starts`` over the padded height), so the result is the same as predicting the scene in
one piece (tests/scenes/test_scenes.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from keras_glacier.constants import OUTPUT_STRIDE
from keras_glacier.data.bands import nodata_mask
from keras_glacier.inference import predict_probabilities, solution_module
from keras_glacier.scenes.io import ceil_to


@dataclass(frozen=True)
class StripPlan:
    """Row starts of the strips, their height, and the windows per strip."""

    height: int
    width: int
    window_rows: int
    starts: tuple[int, ...]
    columns: int

    @property
    def windows(self) -> int:
        return len(self.starts) * self.columns


def plan_strips(height: int, width: int, window: int, overlap: int) -> StripPlan:
    """The whole scene's window grid, as ``predict_tiles`` would lay it on the padded scene."""
    solution = solution_module()
    padded_h, padded_w = ceil_to(height, OUTPUT_STRIDE), ceil_to(width, OUTPUT_STRIDE)
    window_rows, window_cols = min(window, padded_h), min(window, padded_w)
    starts = tuple(solution.window_starts(padded_h, window_rows, overlap, OUTPUT_STRIDE))
    columns = len(solution.window_starts(padded_w, window_cols, overlap, OUTPUT_STRIDE))
    return StripPlan(height, width, window_rows, starts, columns)


def predict_strips(
    read: Callable[[int, int], np.ndarray],
    forward,
    plan: StripPlan,
    tta: bool,
    window: int,
    overlap: int,
    batch_size: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row, probabilities, nodata)`` for consecutive finished row blocks, top to bottom.

    ``read(row, rows)``: float32 (rows, width, bands) with NaN for no-data. ``probabilities`` is
    (rows, width) for a one-output model, (rows, width, K) for K classes; ``nodata`` is (rows, width) bool.
    """
    solution = solution_module()
    # blend_weights(h, 1, overlap) is the vertical ramp times a constant (the ramp of a 1-pixel
    # width), and a constant common to every strip cancels in the normalisation.
    ramp = solution.blend_weights(plan.window_rows, 1, overlap)[:, 0]
    carry = carry_weight = None  # blended sums of rows [row, row + len(carry)) from earlier strips
    for number, row in enumerate(plan.starts):
        end = min(row + plan.window_rows, plan.height)
        strip = read(row, end - row)
        probability = predict_probabilities(forward, [strip], tta, window, overlap, batch_size)[0]
        weight = ramp[: end - row]
        total = probability * (weight[:, None, None] if probability.ndim == 3 else weight[:, None])
        weights = weight[:, None].copy()
        if carry is not None:
            total[: len(carry)] += carry
            weights[: len(carry)] += carry_weight
        finished = (plan.starts[number + 1] if number + 1 < len(plan.starts) else plan.height) - row
        out = total[:finished] / (weights[:finished, :, None] if total.ndim == 3 else weights[:finished])
        yield row, out.astype(np.float32, copy=False), nodata_mask(strip[:finished])
        carry, carry_weight = total[finished:], weights[finished:]
        del strip, probability, total, out
