"""The weight average: its momentum ramp, the average the optimiser keeps, and the swap around
validation, which must never change what training does."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_glacier.callbacks import AveragedWeights
from keras_glacier.training.config import TrainConfig
from keras_glacier.training.optimizer import RAMP, AveragedAdamW, ema_momentum_at, make_optimizer


def test_momentum_starts_with_a_copy_then_ramps_up_to_the_ceiling():
    steps = np.array([0, 1, 2, 10, 90, 10_000])
    got = np.asarray(ema_momentum_at(steps, 0.99))
    ramp = (1 + steps) / (RAMP + steps)
    expected = np.where(steps == 0, 0.0, np.minimum(0.99, ramp))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] == 0.0 and got[1] == pytest.approx(2 / 11) and got[-1] == pytest.approx(0.99)


def test_optimizer_keeps_the_ramped_average_of_the_weights_it_produced():
    weight = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
    optimizer = AveragedAdamW(learning_rate=0.1, weight_decay=0.0, use_ema=True, ema_momentum=0.6)
    optimizer.build([weight])
    expected = None
    rng = np.random.default_rng(0)
    for step in range(12):
        optimizer.apply([keras.ops.convert_to_tensor(rng.normal(size=2).astype("float32"))], [weight])
        value = np.asarray(weight.value)
        m = 0.0 if step == 0 else min(0.6, (1 + step) / (RAMP + step))
        expected = value if expected is None else m * expected + (1 - m) * value
    average = np.asarray(optimizer._model_variables_moving_average[0].value)
    np.testing.assert_allclose(average, expected, rtol=1e-5)
    assert not np.allclose(average, np.asarray(weight.value)), "the average must lag the raw weights"


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(inputs)))
    return model


class Record(keras.callbacks.Callback):
    """The model's weights as the callbacks after AveragedWeights see them at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.at_epoch_end, self.averages = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append([np.asarray(w) for w in self.model.get_weights()])
        # After the swap the optimiser's slots hold the raw weights; record what they are.
        self.averages.append([np.asarray(a.value) for a in self.model.optimizer._model_variables_moving_average])


def fit(seed, callbacks, ema):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([1.0, -1.0, 0.5], dtype="float32"))[:, None]
    model = tiny_model(seed)
    optimizer = (AveragedAdamW(learning_rate=0.05, use_ema=True, ema_momentum=0.9) if ema
                 else keras.optimizers.AdamW(learning_rate=0.05))
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), callbacks=callbacks, verbose=0,
                        shuffle=False)
    return model, history, (x, y)


def test_validation_and_epoch_end_see_the_average_while_training_follows_the_raw_weights():
    record = Record()
    averaged, history, (x, y) = fit(0, [AveragedWeights(), record], ema=True)
    plain, _, _ = fit(0, [], ema=False)
    # Training is untouched by the swaps: the raw weights (back in the optimiser's slots at the
    # end of the last epoch) are those of the same run without averaging.
    for raw, reference in zip(record.averages[-1], plain.get_weights()):
        np.testing.assert_allclose(raw, reference, rtol=1e-5, atol=1e-6)
    # At each epoch's end the model holds the average, and validation scored exactly that.
    final = [np.asarray(w) for w in averaged.get_weights()]
    for got, want in zip(record.at_epoch_end[-1], final):
        np.testing.assert_array_equal(got, want)
    assert not all(np.allclose(a, b) for a, b in zip(final, plain.get_weights()))
    assert history.history["val_loss"][-1] == pytest.approx(averaged.evaluate(x, y, verbose=0), rel=1e-5)


def test_callback_refuses_an_optimizer_without_an_average():
    model = tiny_model(0)
    model.compile(optimizer=keras.optimizers.AdamW(), loss="mse")
    with pytest.raises(ValueError, match="use_ema=True"):
        model.fit(np.zeros((4, 3)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[AveragedWeights()])


def test_ema_setting_chooses_the_optimizer_and_is_checked(tmp_path):
    off = make_optimizer(TrainConfig(), 8)
    assert not getattr(off, "use_ema", False), "the raw weights by default"
    averaged = make_optimizer(TrainConfig(ema=0.99), 8)
    assert isinstance(averaged, AveragedAdamW) and averaged.use_ema and averaged.ema_momentum == 0.99
    from keras_glacier.errors import UsageError

    with pytest.raises(UsageError, match="--ema"):
        TrainConfig(ema=1.0)
    saved = TrainConfig(epochs=3).to_dict()
    del saved["ema"]  # a run saved before the setting existed resumes as it trained
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert TrainConfig.from_run(tmp_path).ema == 0.0
    assert TrainConfig.from_dict(TrainConfig(ema=0.5).to_dict()).ema == 0.5
