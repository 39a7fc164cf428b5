"""K-class confusion-matrix scores against scikit-learn, and best_threshold against brute force."""

import keras_glacier  # noqa: F401, I001  (first: selects the JAX backend before keras is imported)

import warnings

import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, matthews_corrcoef, precision_score, recall_score

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.metrics import (
    ClassScore,
    MulticlassMCC,
    best_threshold,
    confusion_matrix,
    multiclass_mcc,
    multiclass_scores,
    segmentation_metrics,
)

NAMES = ("background", "glacier", "debris", "lake")


def labelled(rng, k=4, shape=(2, 12, 10), skill=1.2, ignored=0.1):
    truth = rng.choice(k, size=shape, p=[0.6, 0.25, 0.1, 0.05][:k] / np.sum([0.6, 0.25, 0.1, 0.05][:k]))
    logits = rng.normal(size=(*shape, k)).astype(np.float32)
    logits += skill * np.eye(k, dtype=np.float32)[truth]
    truth = truth.astype(np.uint8)
    truth[rng.random(shape) < ignored] = IGNORE_INDEX
    return truth, logits


def sklearn_reference(y, p, k):
    labels = list(range(k))
    return {
        "mcc": matthews_corrcoef(y, p),
        "iou": jaccard_score(y, p, labels=labels, average=None, zero_division=0),
        "f1": f1_score(y, p, labels=labels, average=None, zero_division=0),
        "precision": precision_score(y, p, labels=labels, average=None, zero_division=0),
        "recall": recall_score(y, p, labels=labels, average=None, zero_division=0),
    }


@pytest.mark.parametrize("seed, k", [(0, 4), (1, 3)])
def test_numpy_and_keras_scores_equal_sklearn_over_several_batches(seed, k):
    rng = np.random.default_rng(seed)
    batches = [labelled(rng, k) for _ in range(3)]
    metrics = segmentation_metrics(task="multiclass", class_names=NAMES[:k])
    assert [m.name for m in metrics] == ["mcc", "mean_iou", *(f"iou_{n}" for n in NAMES[:k])]
    truths, preds, matrix = [], [], np.zeros((k, k), np.int64)
    for truth, logits in batches:
        for metric in metrics:
            metric.update_state(truth[..., None], logits)
        pred = logits.argmax(-1)
        matrix += confusion_matrix(truth, pred, k)
        valid = truth != IGNORE_INDEX
        truths.append(truth[valid])
        preds.append(pred[valid])
    y, p = np.concatenate(truths), np.concatenate(preds)
    reference = sklearn_reference(y, p, k)
    assert 0.2 < reference["mcc"] < 0.9  # a case where pooling and per-batch averaging differ
    np.testing.assert_array_equal(metrics[0].matrix(), matrix)
    scores = multiclass_scores(matrix, NAMES[:k])
    assert scores["mcc"] == pytest.approx(reference["mcc"], abs=1e-12)
    assert scores["mean_iou"] == pytest.approx(np.mean(reference["iou"]), abs=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean(y == p), abs=1e-12)
    for i, name in enumerate(NAMES[:k]):
        for score in ("iou", "f1", "precision", "recall"):
            assert scores["per_class"][name][score] == pytest.approx(reference[score][i], abs=1e-12)
        assert scores["per_class"][name]["support"] == np.count_nonzero(y == i)
    logged = {m.name: float(m.result()) for m in metrics}
    assert logged["mcc"] == pytest.approx(reference["mcc"], abs=1e-6)
    assert logged["mean_iou"] == pytest.approx(np.mean(reference["iou"]), abs=1e-6)
    for i, name in enumerate(NAMES[:k]):
        assert logged[f"iou_{name}"] == pytest.approx(reference["iou"][i], abs=1e-6)


def test_hand_made_matrix():
    # truth 0 0 0 1 1 2, prediction 0 0 1 1 2 2: c = 4, s = 6, t = (3, 2, 1), p = (2, 2, 2):
    # MCC = (4*6 - (6 + 4 + 2)) / sqrt((36 - 12) * (36 - 14)) = 12 / sqrt(528).
    truth = np.array([0, 0, 0, 1, 1, 2, IGNORE_INDEX])
    pred = np.array([0, 0, 1, 1, 2, 2, 2])
    matrix = confusion_matrix(truth, pred, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert multiclass_mcc(matrix) == pytest.approx(12 / np.sqrt(528), abs=1e-15)
    per = multiclass_scores(matrix, ["a", "b", "c"])["per_class"]
    assert per["a"] == {"iou": 2 / 3, "f1": 0.8, "precision": 1.0, "recall": 2 / 3, "support": 3}
    assert per["b"]["iou"] == pytest.approx(1 / 3) and per["c"]["precision"] == 0.5
    with pytest.raises(ValueError, match=r"prediction has class values \[3\]"):
        confusion_matrix(truth, np.where(pred == 2, 3, pred), 3)
    with pytest.raises(ValueError, match=r"truth has class values \[7\]"):
        confusion_matrix(np.where(truth == 2, 7, truth), pred, 3)


def test_degenerate_cases_follow_sklearn():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # sklearn: "A single label was found"
        one_class = matthews_corrcoef([1, 1, 1], [1, 1, 1])
    matrix = confusion_matrix(np.ones(3, int), np.ones(3, int), 3)
    assert multiclass_mcc(matrix) == one_class == 0.0
    scores = multiclass_scores(matrix)
    assert scores["mean_iou"] == 1.0  # only class 1 occurs, and it is perfect
    assert scores["per_class"]["class_0"]["iou"] == 0.0
    metric = MulticlassMCC(3)
    metric.update_state(np.full((1, 2, 2), IGNORE_INDEX), np.zeros((1, 2, 2, 3), np.float32))
    assert float(metric.result()) == 0.0 and metric.matrix().sum() == 0


def test_keras_metrics_serialise_and_reset():
    metric = ClassScore(4, 2, "f1", name="f1_debris")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, ClassScore) and clone.get_config() == metric.get_config()
    truth, logits = labelled(np.random.default_rng(3))
    clone.update_state(truth, logits)
    reference = f1_score(truth[truth != IGNORE_INDEX] == 2, logits.argmax(-1)[truth != IGNORE_INDEX] == 2)
    assert float(clone.result()) == pytest.approx(reference, abs=1e-6)
    clone.reset_state()
    assert clone.matrix().sum() == 0
    with pytest.raises(ValueError, match="class names"):
        segmentation_metrics(task="multiclass")


def brute_force(truth, prob):
    """MCC of every candidate threshold (each distinct probability, and one below them all) by recounting."""
    valid = truth != IGNORE_INDEX
    y, p = truth[valid] == 1, prob[valid]
    best = (-2.0, None)
    for t in np.concatenate([[-1.0], np.unique(p)]):
        pred = p > t
        mcc = matthews_corrcoef(y, pred) if y.any() and not y.all() else 0.0
        if mcc > best[0] + 1e-12:
            best = (mcc, t)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((3, 9, 7)) < 0.3).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = IGNORE_INDEX
    # Probabilities rounded to 1/50 (many ties) and shifted so that the best threshold is not 0.5.
    prob = np.round(np.clip(rng.normal(0.15 + 0.2 * (truth == 1), 0.1), 0, 1) * 50) / 50
    prob = prob.astype(np.float32)
    threshold, mcc = best_threshold(truth, prob)
    expected, _ = brute_force(truth, prob)
    assert mcc == pytest.approx(expected, abs=1e-12)
    valid = truth != IGNORE_INDEX
    assert matthews_corrcoef(truth[valid] == 1, prob[valid] > np.float32(threshold)) == pytest.approx(mcc, abs=1e-12)
    assert threshold != 0.5
    # Per-tile lists of different sizes give the same answer as one array.
    tiles_truth = [truth[0], truth[1:].reshape(-1)]
    tiles_prob = [prob[0], prob[1:].reshape(-1)]
    assert best_threshold(tiles_truth, tiles_prob) == (threshold, mcc)


def test_best_threshold_prefers_half_and_midpoints():
    # Two pixel values 0.2 (background) and 0.4 (glacier): every t in [0.2, 0.4) separates them
    # perfectly; the midpoint 0.3 is returned.
    truth = np.array([0, 0, 1, 1], np.uint8)
    assert best_threshold(truth, np.array([0.2, 0.2, 0.4, 0.4])) == (pytest.approx(0.3), 1.0)
    # 0.5 already separates perfectly: keep it.
    assert best_threshold(truth, np.array([0.1, 0.2, 0.7, 0.9])) == (0.5, 1.0)
    # No glacier at all: nothing beats 0.5; no valid pixel: (0.5, 0.0).
    assert best_threshold(np.zeros(4, np.uint8), np.array([0.1, 0.6, 0.7, 0.9])) == (0.5, 0.0)
    assert best_threshold(np.full(3, IGNORE_INDEX, np.uint8), np.array([0.1, 0.6, 0.7])) == (0.5, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        best_threshold(truth, np.array([0.1, np.nan, 0.2, 0.3]))


def test_compiled_evaluation_logs_the_multiclass_scores_of_the_whole_set():
    """Loss and metrics inside a jit-compiled evaluate step: ``mcc`` is sklearn's MCC of the argmax."""
    from keras_glacier.losses import make_loss

    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, (6, 8, 8, 1)).astype(np.uint8)
    x[..., 0] += y[..., 0]  # learnable
    y[:, 0] = IGNORE_INDEX
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    model.compile(optimizer="adam", loss=make_loss("bce_dice", "multiclass", 4, class_weights=[1, 1, 2, 3]),
                  metrics=segmentation_metrics(task="multiclass", class_names=NAMES), jit_compile=True)
    logged = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    pred = model.predict(x, batch_size=4, verbose=0).argmax(-1)
    valid = y[..., 0] != IGNORE_INDEX
    assert logged["mcc"] == pytest.approx(matthews_corrcoef(y[..., 0][valid], pred[valid]), abs=1e-5)
    assert np.isfinite(logged["loss"])
