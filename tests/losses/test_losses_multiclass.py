"""K-class and alternative losses (Lovasz, focal, Tversky) against hand-computed values and an
independent numpy implementation of each formula (written from the papers, not from the code)."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import math

import jax
import keras
import numpy as np
import pytest

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.losses import (
    LOSS_NAMES,
    BceDiceLoss,
    CeDiceLoss,
    FocalLoss,
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    auto_class_weights,
    make_loss,
)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def batch(rng, k=3, shape=(2, 8, 8), ignored=0.15):
    labels = rng.integers(0, k, shape).astype(np.uint8)
    labels[rng.random(shape) < ignored] = IGNORE_INDEX
    logits = rng.normal(size=(*shape, k)).astype(np.float32) * 2.0
    return labels, logits


def valid_pixels(labels, logits):
    valid = labels != IGNORE_INDEX
    return labels[valid].astype(int), logits[valid].astype(np.float64)


def np_ce_dice(labels, logits, alpha, weights=None, smooth=1.0):
    y, x = valid_pixels(labels, logits)
    k = x.shape[-1]
    w = np.ones(k) if weights is None else np.asarray(weights, float)
    p = softmax(x)
    ce = np.sum(w[y] * -np.log(p[np.arange(len(y)), y])) / np.sum(w[y])
    dice = []
    for c in range(k):
        t = (y == c).astype(float)
        dice.append(1 - (2 * np.sum(p[:, c] * t) + smooth) / (np.sum(p[:, c]) + np.sum(t) + smooth))
    return alpha * ce + (1 - alpha) * np.sum(w * np.array(dice)) / np.sum(w)


def jaccard_steps(errors, positive):
    """Lovasz extension of the Jaccard loss, from sets: the i most wrong pixels are the mistakes M_i
    and Delta(M_i) = |M_i| / |positives u M_i|; the loss is sum_i e_(i) (Delta(M_i) - Delta(M_{i-1}))."""
    order = np.argsort(-errors, kind="stable")
    total, previous, mistakes = 0.0, 0.0, set()
    positives = set(np.flatnonzero(positive))
    for i in order:
        mistakes.add(i)
        delta = len(mistakes) / len(positives | mistakes)
        total += errors[i] * (delta - previous)
        previous = delta
    return total


def test_ce_dice_hand_computed():
    # Two valid pixels (classes 0 and 2) and one ignored pixel with a huge logit, K = 3, all logits 0
    # on the valid ones: p = 1/3 everywhere, CE = ln 3; Dice (smooth 1): class 0 and 2:
    # 1 - (2/3 + 1) / (1/3 + 1/3 + 1 + 1) = 3/8, class 1: 1 - 1 / (2/3 + 1) = 2/5.
    labels = np.array([[[0, 2, IGNORE_INDEX]]], np.uint8)
    logits = np.zeros((1, 1, 3, 3), np.float32)
    logits[0, 0, 2] = [1e30, -1e30, np.inf]
    expected = 0.5 * math.log(3) + 0.5 * (3 / 8 + 2 / 5 + 3 / 8) / 3
    assert float(CeDiceLoss(3)(labels, logits)) == pytest.approx(expected, rel=1e-6)
    # Class weights [1, 2, 4]: CE unchanged (same -log p everywhere), Dice weighted towards class 2.
    weighted = 0.5 * math.log(3) + 0.5 * (3 / 8 + 2 * 2 / 5 + 4 * 3 / 8) / 7
    assert float(CeDiceLoss(3, class_weights=[1, 2, 4])(labels, logits)) == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("alpha, weights", [(0.5, None), (0.2, None), (0.7, [0.5, 1.0, 3.0]), (1.0, [1, 0, 2])])
def test_ce_dice_matches_numpy(alpha, weights):
    labels, logits = batch(np.random.default_rng(0))
    got = float(CeDiceLoss(3, alpha=alpha, class_weights=weights)(labels, logits))
    assert got == pytest.approx(np_ce_dice(labels, logits, alpha, weights), rel=1e-5)


def test_label_layouts_give_the_same_loss():
    labels, logits = batch(np.random.default_rng(1), k=4)
    loss = CeDiceLoss(4)
    reference = float(loss(labels, logits))
    assert float(loss(labels[..., None].astype(np.float32), logits)) == pytest.approx(reference, rel=1e-7)
    assert float(loss(labels.astype(np.float32), logits)) == pytest.approx(reference, rel=1e-7)
    with pytest.raises(ValueError, match="channels"):
        CeDiceLoss(3)(labels, logits)


def test_pure_ce_equals_keras_sparse_categorical_crossentropy():
    rng = np.random.default_rng(2)
    labels, logits = batch(rng, ignored=0.0)
    ours = float(CeDiceLoss(3, alpha=1.0)(labels, logits))
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels.reshape(-1), logits.reshape(-1, 3))
    assert ours == pytest.approx(float(reference), rel=1e-5)


def test_binary_class_weights_weigh_bce_by_the_true_class():
    y = np.array([[1, 0, 0, IGNORE_INDEX]], np.float32)[..., None]
    x = np.array([[0.3, -1.0, 2.0, 50.0]], np.float32)[..., None]
    bce = -np.array([math.log(sigmoid(0.3)), math.log(1 - sigmoid(-1.0)), math.log(1 - sigmoid(2.0))])
    weighted = (3 * bce[0] + 0.5 * bce[1] + 0.5 * bce[2]) / 4.0
    got = float(BceDiceLoss(alpha=1.0, class_weights=[0.5, 3.0])(y, x))
    assert got == pytest.approx(weighted, rel=1e-6)
    assert float(BceDiceLoss(alpha=1.0)(y, x)) == pytest.approx(bce.mean(), rel=1e-6)


def test_lovasz_hinge_hand_computed():
    # labels 1, 0, 1 and logits 2, 0.5, -1: hinge errors 1 - x*s = -1, 1.5, 2. Sorted: 2 (positive),
    # 1.5 (negative), then -1 (relu 0). Jaccard steps: {3} -> 1/2, {3, 2} -> 2/3. Loss 2 * 1/2 +
    # 1.5 * (2/3 - 1/2) = 1.25. An ignored pixel with an infinite logit changes nothing.
    y = np.array([[1, 0, 1, IGNORE_INDEX]], np.float32)[..., None]
    x = np.array([[2.0, 0.5, -1.0, np.inf]], np.float32)[..., None]
    assert float(LovaszHingeLoss()(y, x)) == pytest.approx(1.25, rel=1e-6)
    grad = jax.grad(lambda v: LovaszHingeLoss()(y, v))(x)
    assert np.isfinite(np.asarray(grad)).all() and float(np.asarray(grad)[0, 3, 0]) == 0.0


def test_lovasz_hinge_matches_the_set_definition():
    rng = np.random.default_rng(3)
    y = (rng.random((2, 6, 5, 1)) < 0.4).astype(np.float32)
    y[rng.random(y.shape) < 0.2] = IGNORE_INDEX
    x = rng.normal(size=y.shape).astype(np.float32) * 2
    valid = y != IGNORE_INDEX
    t, v = y[valid], x[valid].astype(np.float64)
    errors = np.maximum(1 - v * (2 * t - 1), 0.0)
    assert float(LovaszHingeLoss()(y, x)) == pytest.approx(jaccard_steps(errors, t == 1), rel=1e-5)


def test_lovasz_softmax_matches_the_set_definition_over_present_classes():
    rng = np.random.default_rng(4)
    labels, logits = batch(rng, k=4)
    labels[labels == 3] = 1  # class 3 absent from the truth: left out of the mean
    y, x = valid_pixels(labels, logits)
    p = softmax(x)
    per_class = [jaccard_steps(np.abs((y == c) - p[:, c]), y == c) for c in range(3)]
    assert float(LovaszSoftmaxLoss(4)(labels, logits)) == pytest.approx(np.mean(per_class), rel=1e-5)
    weights = [1.0, 2.0, 0.5, 9.0]
    expected = np.dot(weights[:3], per_class) / sum(weights[:3])
    got = float(LovaszSoftmaxLoss(4, class_weights=weights)(labels, logits))
    assert got == pytest.approx(expected, rel=1e-5)


def test_focal_hand_computed_and_numpy():
    # One glacier pixel with logit 0: p_t = 1/2, focal = (1/2)**2 * ln 2; a confident right pixel
    # (logit 10 for background) weighs (1 - p_t)**2 ~ 2e-9 of its BCE.
    y = np.array([[1, 0]], np.float32)[..., None]
    x = np.array([[0.0, -10.0]], np.float32)[..., None]
    easy = (1 - (1 - sigmoid(-10.0))) ** 2 * -math.log(1 - sigmoid(-10.0))
    assert float(FocalLoss()(y, x)) == pytest.approx((0.25 * math.log(2) + easy) / 2, rel=1e-5)

    labels, logits = batch(np.random.default_rng(5))
    t, v = valid_pixels(labels, logits)
    pt = softmax(v)[np.arange(len(t)), t]
    w = np.array([0.2, 1.0, 5.0])
    expected = np.sum(w[t] * (1 - pt) ** 2 * -np.log(pt)) / np.sum(w[t])
    got = float(FocalLoss("multiclass", 3, class_weights=list(w))(labels, logits))
    assert got == pytest.approx(expected, rel=1e-5)


def test_tversky_hand_computed_and_numpy():
    # Two pixels at p = 1/2, one glacier: TP = FP = FN = 1/2, index (1/2 + 1) / (1/2 + 0.3/2 + 0.7/2 + 1) = 3/4.
    y = np.array([[1, 0, IGNORE_INDEX]], np.float32)[..., None]
    x = np.array([[0.0, 0.0, 7.0]], np.float32)[..., None]
    assert float(TverskyLoss()(y, x)) == pytest.approx(0.25, rel=1e-6)

    labels, logits = batch(np.random.default_rng(6), k=4)
    t, v = valid_pixels(labels, logits)
    p = softmax(v)
    per_class = []
    for c in range(4):
        truth = (t == c).astype(float)
        tp, fp, fn = np.sum(p[:, c] * truth), np.sum(p[:, c] * (1 - truth)), np.sum((1 - p[:, c]) * truth)
        per_class.append(1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1))
    assert float(TverskyLoss("multiclass", 4)(labels, logits)) == pytest.approx(np.mean(per_class), rel=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_every_loss_round_trips_and_has_finite_gradients(name, task):
    rng = np.random.default_rng(7)
    k = 2 if task == "binary" else 4
    labels, logits = batch(rng, k=k)
    if task == "binary":
        logits = logits[..., :1]
    logits[labels == IGNORE_INDEX] = np.inf  # ignored pixels never poison the value or the gradient
    weights = None if (task == "binary" and name in ("lovasz", "tversky")) else list(rng.uniform(0.5, 2, k))
    loss = make_loss(name, task, k, class_weights=weights)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    value = float(loss(labels, logits))
    assert np.isfinite(value) and value > 0 and float(clone(labels, logits)) == value
    grad = np.asarray(jax.grad(lambda v: loss(labels, v))(logits))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    assert np.all(grad[labels == IGNORE_INDEX] == 0)


def test_make_loss_refuses_what_it_cannot_honour():
    assert isinstance(make_loss(), BceDiceLoss) and make_loss("bce_dice", "binary", 2, alpha=0.3).alpha == 0.3
    assert isinstance(make_loss("bce_dice", "multiclass", 3), CeDiceLoss)
    for kwargs, message in [
        (dict(name="dice"), "unknown loss"),
        (dict(name="focal", alpha=0.3), "alpha"),
        (dict(name="lovasz", class_weights=[1, 2]), "no class weights"),
        (dict(name="tversky", class_weights=[1, 2]), "no class weights"),
        (dict(task="multiclass", num_classes=3, class_weights=[1, 2]), "2 class weights for 3"),
        (dict(task="binary", num_classes=3), "2 classes"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_loss(**kwargs)


def test_auto_class_weights_inverse_square_root_with_unit_mean_pixel_weight():
    # fractions 0.81, 0.09, 0.01, 0.09: sqrt 0.9, 0.3, 0.1, 0.3 (sum 1.6); w = 1 / (sqrt(f) * 1.6).
    expected = [1 / (0.9 * 1.6), 1 / (0.3 * 1.6), 1 / (0.1 * 1.6), 1 / (0.3 * 1.6)]
    assert auto_class_weights([81, 9, 1, 9]) == pytest.approx(expected, rel=1e-12)
    assert auto_class_weights([0.81, 0.09, 0.01, 0.09]) == pytest.approx(expected, rel=1e-12)
    assert np.dot([0.81, 0.09, 0.01, 0.09], expected) == pytest.approx(1.0)
    assert auto_class_weights([3, 0, 1]) == pytest.approx([1 / (math.sqrt(0.75) * (math.sqrt(0.75) + 0.5)), 0.0,
                                                           1 / (0.5 * (math.sqrt(0.75) + 0.5))])
    for bad in ([1], [0, 0], [1, -1], [1, float("nan")]):
        with pytest.raises(ValueError, match="class frequencies"):
            auto_class_weights(bad)
