"""Padding, windowing, blending and the TTA driver of solution.py (numpy forwards and the real network)."""

import numpy as np
import pytest
import torch

import solution
from solution import blend_weights, pad_to_multiple, predict_probabilities, predict_tiles, window_starts
from tests.solution_fixtures import make_test_model, scene


@pytest.fixture(scope="module")
def model():
    return make_test_model()


def pointwise_forward(calls=None):
    """A per-pixel 'network': tiling, padding and flipping must not change its output at all."""

    def forward(batch):
        assert batch.dtype == np.float32 and batch.flags.c_contiguous
        assert batch.shape[1] % 16 == 0 and batch.shape[2] % 16 == 0
        if calls is not None:
            calls.append(batch.shape)
        logit = (batch[..., 0] - 2 * batch[..., 1] + 0.5 * batch[..., 2]) / 300.0
        return 1.0 / (1.0 + np.exp(-logit))[..., None]  # (N, H, W, 1) is accepted too

    return forward


def expected_pointwise(image):
    logit = (image[..., 0] - 2 * image[..., 1] + 0.5 * image[..., 2]) / 300.0
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def test_pad_to_multiple_reflects_bottom_right():
    image = np.arange(5 * 7 * 2, dtype=np.float32).reshape(5, 7, 2)
    padded, size = pad_to_multiple(image, 16)
    assert size == (5, 7) and padded.shape == (16, 16, 2)
    np.testing.assert_array_equal(padded[:5, :7], image)
    np.testing.assert_array_equal(padded[5, :7], image[3])  # reflection, edge row not repeated
    np.testing.assert_array_equal(padded[:5, 7], image[:, 5])
    same, size = pad_to_multiple(np.zeros((32, 48, 1)), 16)
    assert same.shape == (32, 48, 1) and size == (32, 48)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 20, 2), (17, 1, 2), (2, 2, 1)])
def test_pad_to_multiple_tiny_images(shape):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    padded, size = pad_to_multiple(image, 16)
    assert size == shape[:2]
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)
    assert set(np.unique(padded)) <= set(np.unique(image))


def test_window_starts_cover_with_overlap_and_alignment():
    assert window_starts(100, 128, 32, 16) == [0]
    assert window_starts(128, 128, 32, 16) == [0]
    starts = window_starts(400, 128, 40, 16)
    assert starts[0] == 0 and starts[-1] == 400 - 128
    assert all(s % 16 == 0 for s in starts)
    assert all(b - a <= 128 - 40 for a, b in zip(starts, starts[1:]))  # at least the overlap
    assert starts == sorted(set(starts))
    assert window_starts(1000, 100, 0) == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    with pytest.raises(ValueError):
        window_starts(400, 128, 128)
    with pytest.raises(ValueError):
        window_starts(400, 0)


def test_blend_weights_cross_fade_to_one():
    w = blend_weights(80, 96, 32)
    assert w.shape == (80, 96) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_array_equal(w, w[:, 48:49] * w[40:41])  # separable, plateau of 1 inside
    row, column = w[40], w[:, 48]
    # windows overlapping by 32 pixels: their weights in the shared strip sum to 1
    np.testing.assert_allclose(row[64:] + row[:32], 1.0, rtol=1e-6)
    np.testing.assert_allclose(column[48:] + column[:32], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(blend_weights(16, 16, 0), np.ones((16, 16), np.float32))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("tta", [False, True])
def test_tiled_equals_untiled_for_a_pixelwise_forward(tta, batch_size):
    image = scene(150, 230, seed=3)
    calls = []
    tiled = predict_tiles(
        pointwise_forward(calls), [image], tta=tta, window=64, overlap=16, batch_size=batch_size
    )[0]
    whole = predict_tiles(pointwise_forward(), [image], tta=tta, window=1024)[0]
    assert tiled.shape == whole.shape == (150, 230) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, expected_pointwise(image), atol=1e-6)
    np.testing.assert_allclose(whole, expected_pointwise(image), atol=1e-6)
    assert all(shape[1:3] == (64, 64) for shape in calls)
    windows = len(window_starts(160, 64, 16, 16)) * len(window_starts(240, 64, 16, 16))
    assert windows == 15
    views = 4 if tta else 1
    windows_per_call = max(1, batch_size // 4) if tta else batch_size
    assert max(shape[0] for shape in calls) == min(batch_size, views * windows_per_call)
    assert sum(shape[0] for shape in calls) == views * windows


@pytest.mark.parametrize("answering", range(4))
def test_tta_unflips_each_view(answering):
    """Only view ``answering`` answers (with a band's values, position-dependent); the others say 0.

    Each view is checked in turn, so a wrong or missing un-flip of any one of the four shows: the
    result must be the unflipped band divided by the four views.
    """
    image = scene(32, 48, seed=4)

    def forward(batch):
        n = len(batch) // 4
        out = np.zeros(batch.shape[:3], np.float32)
        block = slice(answering * n, (answering + 1) * n)
        out[block] = batch[block, ..., answering] / 1000.0
        return out

    prob = predict_tiles(forward, [image], tta=True)[0]
    np.testing.assert_allclose(prob, image[..., answering] / 4000.0, rtol=1e-5)


@pytest.mark.parametrize("views", [1, 2])
def test_fewer_views_use_the_first_views_unflipped(views):
    """views=2 averages the image as is and flipped left-right; views=1 is the image alone."""
    image = scene(32, 48, seed=5)
    seen = []

    def forward(batch):
        seen.append(len(batch))
        # Answer with channel 0 for the identity view and channel 1 for the left-right view.
        out = batch[..., 0].copy() / 1000.0
        if len(batch) == 2:
            out[1] = batch[1, ..., 1] / 1000.0
        return out

    prob = predict_tiles(forward, [image], views=views, batch_size=4)[0]
    expected = image[..., 0] / 1000.0 if views == 1 else (image[..., 0] + image[..., 1]) / 2000.0
    np.testing.assert_allclose(prob, expected, rtol=1e-5)
    assert seen == [views]
    with pytest.raises(ValueError, match="views must be 1, 2 or 4"):
        predict_tiles(forward, [image], views=3)


def test_k_class_forward_gives_class_probabilities_and_nodata_is_background():
    """A 3-class forward: (H, W, 3) averaged over the four views; no-data pixels certain background."""
    image = scene(32, 48, seed=6)
    image[3, 5] = np.nan
    image[7, 9] = 0.0

    def forward(batch):  # a pointwise "softmax" of the first three bands
        logits = np.nan_to_num(batch[..., :3]) / 300.0
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    prob = predict_tiles(forward, [image], tta=True)[0]
    assert prob.shape == (32, 48, 3) and prob.dtype == np.float32
    clean = np.nan_to_num(image)
    expected = forward(clean[None])[0]
    valid = np.ones((32, 48), bool)
    valid[3, 5] = valid[7, 9] = False
    np.testing.assert_allclose(prob[valid], expected[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(prob[3, 5], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(prob[7, 9], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_tta_passes_of_any_size_match_one_pass(model, batch_size):
    """Views split over several forward passes are unflipped and averaged exactly as in one pass."""
    images = [scene(64, 64, seed=s) for s in (11, 12)]
    forward = solution.torch_forward(model)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return forward(batch)

    split = predict_tiles(counting, images, tta=True, batch_size=batch_size)
    whole = predict_tiles(forward, images, tta=True, batch_size=8)
    assert max(calls) == batch_size and sum(calls) == 8
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_default_batch_size_is_one_image_on_cpu_and_sixteen_on_gpu():
    assert solution.default_batch_size("cpu") == 1
    assert solution.default_batch_size("cuda") == 16
    assert solution.default_batch_size() == (16 if torch.cuda.is_available() else 1)


def test_blended_seams_are_smooth():
    """Windows that disagree (each predicts its own mean) must cross-fade, not step."""
    width = 256
    image = np.repeat(np.linspace(100, 1000, width, dtype=np.float32)[None, :, None], 32, axis=0)
    image = np.repeat(image, 3, axis=2)

    def window_mean(batch):
        return np.broadcast_to(batch[..., 0].mean(axis=(1, 2), keepdims=True) / 1000.0, batch.shape[:3])

    prob = predict_tiles(window_mean, [image], tta=False, window=64, overlap=32)[0]
    jumps = np.abs(np.diff(prob[0]))
    starts = window_starts(width, 64, 32, 16)
    step_between_windows = 0.9 * (starts[1] - starts[0]) / width  # mean of neighbouring windows
    assert np.ptp(prob[0]) > 0.5  # the windows really disagree
    assert jumps.max() < step_between_windows / 4  # a hard seam would jump by the whole step
    assert np.abs(prob - prob[:1]).max() < 1e-6  # rows identical: no seam along y


def test_nodata_pixels_get_probability_zero_and_tiles_are_batched_by_size():
    images = [scene(40, 40, seed=s) for s in range(3)] + [scene(20, 70, seed=9)]
    images[1][5:9, 6:10, 2] = np.nan
    images[1][20:24, 0:4] = 0.0
    calls = []

    def always_glacier(batch):
        calls.append(batch.shape)
        return np.ones(batch.shape[:3], np.float32)

    probs = predict_tiles(always_glacier, images, tta=False, batch_size=8)
    assert sorted(shape[:3] for shape in calls) == [(1, 32, 80), (3, 48, 48)]
    assert [p.shape for p in probs] == [(40, 40)] * 3 + [(20, 70)]
    expected = np.ones((40, 40), np.float32)
    expected[5:9, 6:10] = 0
    expected[20:24, 0:4] = 0
    np.testing.assert_array_equal(probs[1], expected)
    assert all(p.min() == 1.0 for i, p in enumerate(probs) if i != 1)


def test_driver_argument_and_forward_checks():
    image = scene(32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        predict_tiles(pointwise_forward(), [image], window=100)
    with pytest.raises(ValueError, match="overlap"):
        predict_tiles(pointwise_forward(), [image], window=64, overlap=64)
    with pytest.raises(ValueError, match="forward returned shape"):
        predict_tiles(lambda batch: np.zeros((1, 8, 8), np.float32), [image], tta=False)


def test_network_tta_is_the_mean_of_the_four_flips(model):
    image = scene(48, 80, seed=6)
    tta = predict_probabilities(model, image, tta=True)
    flips = [
        lambda a: a,
        lambda a: a[:, ::-1],
        lambda a: a[::-1],
        lambda a: a[::-1, ::-1],
    ]
    manual = np.mean(
        [flip(predict_probabilities(model, np.ascontiguousarray(flip(image)), tta=False)) for flip in flips], axis=0
    )
    plain = predict_probabilities(model, image, tta=False)
    np.testing.assert_allclose(tta, manual, atol=2e-5)
    assert np.abs(tta - plain).max() > 1e-3  # the flips really differ for this network


def test_network_windowed_prediction_matches_whole_image(model):
    image = scene(96, 96, seed=5)
    whole = predict_probabilities(model, image, tta=False, window=1024)
    tiled = predict_probabilities(model, image, tta=False, window=64, overlap=32)
    difference = np.abs(whole - tiled)
    # Windows lose some context (global pooling, borders), so agreement is close, not exact;
    # a misplaced or transposed window would differ by about the spread of the probabilities.
    assert whole.std() > 0.1
    assert difference.mean() < 0.2 * np.abs(whole - whole.mean()).mean()
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.95
    assert ((whole > 0.5) == (tiled > 0.5)).mean() > 0.9


def test_network_batching_does_not_mix_tiles(model):
    images = [scene(64, 64, seed=s) for s in (7, 8)] + [scene(21, 35, seed=9)]
    forward = solution.torch_forward(model)
    together = predict_tiles(forward, images, tta=False, batch_size=4)
    for image, prob in zip(images, together):
        alone = predict_tiles(forward, [image], tta=False)[0]
        np.testing.assert_allclose(prob, alone, atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-2


def test_network_odd_sizes_keep_their_shape(model):
    for shape in [(300, 517), (5, 7), (1, 1)]:
        prob = predict_probabilities(model, scene(*shape, seed=1), tta=False)
        assert prob.shape == shape and prob.dtype == np.float32
        assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
