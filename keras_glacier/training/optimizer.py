"""The optimiser of a training run: AdamW on a warm-up/cosine schedule, with weight averaging.

Why average the weights: on a small dataset the validation score of one epoch to the next swings
by more than any change to the recipe (the everest-west folds moved 0.1-0.2 in MCC between
neighbouring epochs), so the "best epoch" that early stopping, the checkpoint and the decision
threshold follow is mostly a lucky draw. An exponential moving average of the weights (Polyak
averaging) is the usual remedy: validation, the checkpoint and the exported model use the average,
training continues from the raw weights. Measured there it smoothed the validation curve but did not
raise the held-out score (benchmarks/RESULTS.md), so it is an option (``--ema``), off by default.

Keras' own EMA starts from the first step's weights and keeps a fixed momentum, so with a few
hundred steps the average is dominated for most of the run by the weights of the first epochs.
:class:`AveragedAdamW` ramps the momentum up instead, ``min(ema, (1 + t) / (10 + t))`` at step
``t`` (as timm's ``ModelEmaV2`` warm-up does): early on the average follows the last ~10% of the
steps taken, and only a long run reaches the full ``ema`` momentum (0.99: ~100 steps).
"""

from __future__ import annotations

import keras
from keras import ops

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is used)

#: Momentum ramp: ``(1 + t) / (RAMP + t)`` at optimiser step ``t``.
RAMP = 10.0


def ema_momentum_at(step, ema: float):
    """The averaging momentum after ``step`` optimiser steps (0 at the first step: a copy)."""
    step = ops.cast(step, "float32")
    ramp = (1.0 + step) / (RAMP + step)
    return ops.where(ops.equal(step, 0.0), 0.0, ops.minimum(float(ema), ramp))


@keras.saving.register_keras_serializable(package="keras_glacier")
class AveragedAdamW(keras.optimizers.AdamW):
    """AdamW whose moving average of the weights uses a momentum ramp (see the module docstring).

    ``use_ema=True`` with ``ema_momentum`` as the ceiling. Where the average lives is the business
    of ``keras_glacier.callbacks.AveragedWeights``, which swaps it into the model at each epoch's end:
    Keras' end-of-fit ``finalize_variable_values`` (copy the optimiser's slots into the model) would
    then put the raw weights back, so it does nothing here.
    """

    def finalize_variable_values(self, var_list):
        return None

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        momentum = ema_momentum_at(self.iterations, self.ema_momentum)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            m = ops.cast(momentum, var.dtype)
            average.assign(ops.add(ops.multiply(m, average), ops.multiply(ops.subtract(1, m), var)))


def make_optimizer(config, steps_per_epoch: int):
    """AdamW under a cosine decay with a short linear warm-up, the usual recipe for DeepLab from scratch;
    with ``config.ema > 0`` it keeps the ramped moving average of the weights.

    The schedule counts optimiser steps of ``steps_per_epoch`` (sampled crops / batch), so it follows
    the epoch size the sampler chose.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(max(1, steps_per_epoch), total // 10 + 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr * 0.1, decay_steps=max(1, total - warmup), alpha=0.01,
        warmup_target=config.lr, warmup_steps=warmup)
    if config.ema > 0:
        return AveragedAdamW(learning_rate=schedule, weight_decay=config.weight_decay, use_ema=True,
                             ema_momentum=config.ema)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
