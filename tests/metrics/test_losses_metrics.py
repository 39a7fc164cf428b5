"""BCE+Dice loss and the whole-set segmentation metrics, against hand-made cases and scikit-learn."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import warnings

import jax
import keras
import numpy as np
import pytest
from sklearn.metrics import (
    f1_score,
    jaccard_score,
    matthews_corrcoef,
    precision_score,
    r2_score,
    recall_score,
)

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.losses import BceDiceLoss, bce_dice_terms
from keras_glacier.metrics import (
    SCORE_NAMES,
    ConfusionCounts,
    MatthewsCorrelation,
    R2Score,
    confusion_counts,
    scores_from_counts,
    segmentation_metrics,
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def labelled_batch(rng, shape=(2, 16, 16, 1), positive=0.3, ignored=0.1, signal=1.5):
    """Labels with ignore pixels and logits that correlate with them."""
    y = (rng.random(shape) < positive).astype("float32")
    y[rng.random(shape) < ignored] = IGNORE_INDEX
    logits = (rng.normal(size=shape) * 2.0 + signal * (y == 1)).astype("float32")
    return y, logits


def reference_loss(y, logits, alpha=0.5, smooth=1.0):
    valid = y != IGNORE_INDEX
    t, p = y[valid].astype(np.float64), sigmoid(logits[valid])
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = 1 - (2 * np.sum(p * t) + smooth) / (np.sum(p) + np.sum(t) + smooth)
    return alpha * bce + (1 - alpha) * dice


def test_loss_matches_the_formula():
    y, logits = labelled_batch(np.random.default_rng(0))
    for alpha in (0.5, 0.2, 1.0):
        loss = float(BceDiceLoss(alpha=alpha)(y, logits))
        assert loss == pytest.approx(reference_loss(y, logits, alpha), rel=1e-5)


def test_pure_bce_equals_keras_binary_crossentropy_on_valid_pixels():
    y, logits = labelled_batch(np.random.default_rng(1), ignored=0.0)
    ours = float(BceDiceLoss(alpha=1.0)(y, logits))
    keras_bce = float(keras.losses.BinaryCrossentropy(from_logits=True)(y.reshape(-1), logits.reshape(-1)))
    assert ours == pytest.approx(keras_bce, rel=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    y = np.zeros((2, 16, 16, 1), "float32")
    y[:, 4:12, 2:9] = 1
    logits = np.where(y == 1, 30.0, -30.0).astype("float32")
    bce, dice = bce_dice_terms(y, logits)
    assert float(dice) < 1e-6
    assert float(bce) < 1e-6
    assert float(BceDiceLoss()(y, logits)) < 1e-6


def test_ignored_pixels_do_not_change_the_loss():
    rng = np.random.default_rng(2)
    y, logits = labelled_batch(rng, shape=(1, 16, 16, 1), ignored=0.0)
    # The same pixels plus a band of ignored ones carrying wild logits (inf included).
    y_padded = np.concatenate([y, np.full((1, 16, 8, 1), IGNORE_INDEX, "float32")], axis=2)
    wild = rng.normal(size=(1, 16, 8, 1)).astype("float32") * 1e4
    wild[0, 0, 0, 0], wild[0, 1, 0, 0] = np.inf, -np.inf
    logits_padded = np.concatenate([logits, wild], axis=2)
    loss = BceDiceLoss()
    assert float(loss(y_padded, logits_padded)) == pytest.approx(float(loss(y, logits)), rel=1e-6)


def test_large_logits_stay_finite_with_finite_gradients():
    y = np.zeros((1, 8, 8, 1), "float32")
    y[:, :4] = 1
    logits = np.where(y == 1, -1e4, 1e4).astype("float32")  # confidently wrong everywhere
    loss = BceDiceLoss(alpha=0.5)
    value = float(loss(y, logits))
    assert value == pytest.approx(0.5 * 1e4 + 0.5 * (1 - 1 / (64 + 32 + 1)), rel=1e-6)
    grad = jax.grad(lambda x: loss(y, x))(logits)
    assert np.isfinite(np.asarray(grad)).all()


def test_all_ignored_batch_gives_zero_loss_not_nan():
    y = np.full((1, 8, 8, 1), IGNORE_INDEX, "float32")
    logits = np.random.default_rng(3).normal(size=y.shape).astype("float32")
    assert float(BceDiceLoss()(y, logits)) == pytest.approx(0.0)


def test_loss_config_round_trip():
    loss = BceDiceLoss(alpha=0.3, smooth=2.0)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, BceDiceLoss)
    assert (clone.alpha, clone.smooth, clone.ignore_index) == (0.3, 2.0, IGNORE_INDEX)
    with pytest.raises(ValueError, match="alpha"):
        BceDiceLoss(alpha=1.5)


def sklearn_scores(y_true, prob):
    y_pred = prob > 0.5
    with warnings.catch_warnings():
        # sklearn's remark that an all-background confusion matrix is 1x1 (the case under test)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        mcc = matthews_corrcoef(y_true, y_pred)
    return {
        "mcc": mcc,
        "iou": jaccard_score(y_true, y_pred, zero_division=0),
        "f1": f1_score(y_true, y_pred, zero_division=0),
        "precision": precision_score(y_true, y_pred, zero_division=0),
        "recall": recall_score(y_true, y_pred, zero_division=0),
        "r2": r2_score(y_true, prob),
    }


def accumulate(batches):
    """Feeds the batches to fresh Keras metrics and to the numpy functions; returns both + sklearn's."""
    metrics = segmentation_metrics()
    counts = ConfusionCounts()
    truths, probs = [], []
    for y, logits in batches:
        for metric in metrics:
            metric.update_state(y, logits)
        prob = sigmoid(logits)
        counts = counts + confusion_counts(y, prob)
        valid = y != IGNORE_INDEX
        truths.append(y[valid])
        probs.append(prob[valid])
    keras_scores = {m.name: float(m.result()) for m in metrics}
    return keras_scores, scores_from_counts(counts), sklearn_scores(np.concatenate(truths), np.concatenate(probs))


def test_metrics_over_several_batches_agree_with_sklearn():
    rng = np.random.default_rng(4)
    batches = [labelled_batch(rng, shape=(2, 24, 16, 1)) for _ in range(4)]
    keras_scores, numpy_scores, reference = accumulate(batches)
    assert set(keras_scores) == set(SCORE_NAMES)
    for name in SCORE_NAMES:
        assert numpy_scores[name] == pytest.approx(reference[name], abs=1e-9), name
        assert keras_scores[name] == pytest.approx(reference[name], abs=1e-6), name
    # Averaging per-batch scores would differ: the metrics really pool the pixels.
    assert 0.0 < reference["mcc"] < 1.0


@pytest.mark.parametrize(
    "case",
    ["all-background", "all-background-some-false-positives", "all-glacier", "only-ignored-positives"],
)
def test_degenerate_cases_follow_sklearn(case):
    rng = np.random.default_rng(5)
    y = np.zeros((2, 8, 8, 1), "float32")
    logits = np.full(y.shape, -20.0, "float32")
    if case == "all-background-some-false-positives":
        logits[0, 0, :3] = 5.0
    elif case == "all-glacier":
        y[:] = 1
        logits = rng.normal(size=y.shape).astype("float32") + 1.0
    elif case == "only-ignored-positives":
        y[0, :2] = IGNORE_INDEX
        logits[0, :2] = 20.0
    keras_scores, numpy_scores, reference = accumulate([(y, logits)])
    for name in SCORE_NAMES:
        assert numpy_scores[name] == pytest.approx(reference[name], abs=1e-9), name
        assert keras_scores[name] == pytest.approx(reference[name], abs=1e-6), name
        assert np.isfinite(keras_scores[name])
    assert keras_scores["mcc"] == 0.0


def test_nothing_valid_gives_zero_scores():
    y = np.full((1, 8, 8, 1), IGNORE_INDEX, "float32")
    logits = np.zeros(y.shape, "float32")
    for metric in segmentation_metrics():
        metric.update_state(y, logits)
        assert float(metric.result()) == 0.0, metric.name
    assert scores_from_counts(confusion_counts(y, sigmoid(logits))) == dict.fromkeys(SCORE_NAMES, 0.0)


def test_counts_stay_exact_beyond_float32_integer_range():
    """2**24 + 1 is not a float32: counts past 16.8M pixels must still be exact."""
    rng = np.random.default_rng(6)
    shape = (4, 1024, 1024, 1)  # 2**22 pixels per batch
    y = (rng.random(shape) < 0.02).astype("float32")
    y[0, 0, :5] = IGNORE_INDEX
    logits = (rng.normal(size=shape) + 6.0 * (y == 1) - 3.0).astype("float32")
    once = confusion_counts(y, sigmoid(logits))
    if once.tn % 2 == 0:  # an odd total above 2**24 has no float32 representation
        negatives = np.flatnonzero((y == 0) & (logits < 0))
        y.reshape(-1)[negatives[0]] = IGNORE_INDEX
        once = confusion_counts(y, sigmoid(logits))
    repeats = 5
    expected = ConfusionCounts()
    for _ in range(repeats):
        expected = expected + once
    assert expected.n > 2**24
    assert float(np.float32(expected.tn)) != expected.tn, "pick data whose count a float32 cannot hold"

    mcc, r2 = MatthewsCorrelation(), R2Score()
    for _ in range(repeats):
        mcc.update_state(y, logits)
        r2.update_state(y, logits)
    got = r2.confusion()
    assert (got.tp, got.fp, got.tn, got.fn) == (expected.tp, expected.fp, expected.tn, expected.fn)
    assert mcc.confusion() == ConfusionCounts(expected.tp, expected.fp, expected.tn, expected.fn)
    assert got.ss_res == pytest.approx(expected.ss_res, rel=1e-6)
    scores = scores_from_counts(expected)
    assert float(mcc.result()) == pytest.approx(scores["mcc"], abs=1e-6)
    assert float(r2.result()) == pytest.approx(scores["r2"], abs=1e-6)

    mcc.reset_state()
    assert mcc.confusion() == ConfusionCounts()


def test_metrics_config_round_trip_and_no_sample_weights():
    metric = R2Score(threshold=0.4)
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, R2Score)
    assert (clone.name, clone.threshold, clone.ignore_index) == ("r2", 0.4, IGNORE_INDEX)
    y = np.ones((1, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="sample weights"):
        metric.update_state(y, y, sample_weight=y)


def test_keras_metric_uses_its_threshold_and_a_strict_comparison():
    """Probabilities between a custom threshold and 0.5 decide the counts, and logits of exactly 0
    (probability 0.5) are background at threshold 0.5: ``>``, not ``>=``."""
    rng = np.random.default_rng(7)
    y = (rng.random((1, 16, 16, 1)) < 0.4).astype("float32")
    y[0, 0, :3] = IGNORE_INDEX
    probs = rng.uniform(0.31, 0.49, y.shape)  # all between the custom threshold 0.3 and 0.5
    logits = np.log(probs / (1 - probs)).astype("float32")
    custom, default = MatthewsCorrelation(threshold=0.3), MatthewsCorrelation()
    custom.update_state(y, logits)
    default.update_state(y, logits)
    def counts(c):
        return c.tp, c.fp, c.tn, c.fn

    at_custom = confusion_counts(y, sigmoid(logits), threshold=0.3)
    assert counts(custom.confusion()) == counts(at_custom) and at_custom.tn == 0 and at_custom.tp > 0
    at_half = confusion_counts(y, sigmoid(logits))
    assert counts(default.confusion()) == counts(at_half) and at_half.tp == 0

    zeros = np.zeros((1, 4, 4, 1), "float32")
    labels = np.zeros_like(zeros)
    labels[0, :2] = 1
    for metric in segmentation_metrics():
        metric.update_state(labels, zeros)
        assert counts(metric.confusion()) == (0, 0, 8, 8), metric.name


def test_r2_residual_sum_needs_its_compensation():
    """One batch of residual 2**16, then 100 batches adding 0.003 each: in plain float32 every small
    addition is below half a unit in the last place of 65536 (2**-8) and is lost, 0.3 in all, a
    relative error of 4.6e-6. The Kahan carry keeps the sum within 1e-6."""
    r2 = R2Score()
    big_y = np.ones((1, 256, 256, 1), "float32")
    r2.update_state(big_y, np.full(big_y.shape, -40.0, "float32"))  # residual 1 on each of 65536 pixels
    small_y = np.ones((1, 1, 3, 1), "float32")
    prob = 1.0 - np.sqrt(0.001)  # (1 - p)^2 = 0.001 per pixel, 0.003 per batch
    small_logits = np.full(small_y.shape, np.log(prob / (1 - prob)), "float32")
    residual = float(np.sum(np.square(1.0 - sigmoid(small_logits))))
    for _ in range(100):
        r2.update_state(small_y, small_logits)
    expected = 65536.0 + 100 * residual
    assert expected - 65536.0 > 0.29
    assert r2.confusion().ss_res == pytest.approx(expected, rel=1e-6)
