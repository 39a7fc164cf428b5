"""Augmentation: image/label alignment, dtype and bands kept, no clipping of raw values, seeded."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.augment import AugmentConfig, Augmenter, _albumentations
from keras_glacier.data.stats import BandStats, to_unit

STATS = BandStats(lo=(1000.0, 200.0, 250.0), hi=(5000.0, 600.0, 300.0), mean=(0.5,) * 3, std=(0.25,) * 3)
SPATIAL_ONLY = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, brightness_contrast=0.0, noise=0.0, affine=0.0)
PIXEL_ONLY = AugmentConfig(hflip=0.0, vflip=0.0, rotate90=0.0, brightness_contrast=1.0, noise=0.0, affine=0.0)
AFFINE_ONLY = AugmentConfig(hflip=0.0, vflip=0.0, rotate90=0.0, brightness_contrast=0.0, noise=0.0, affine=1.0)


def raw_image(size=24, seed=0, low=0.0, high=1.0):
    """Raw-scale values (thousands, hundreds, kelvin) spread over [low, high] of each band's lo..hi."""
    u = np.random.default_rng(seed).uniform(low, high, (size, size, 3))
    lo, hi, _, _ = STATS.arrays()
    return (lo + u * (hi - lo)).astype(np.float32)


def test_dtype_shape_and_band_count_are_kept():
    image = raw_image()
    label = np.zeros(image.shape[:2], np.uint8)
    out, out_label = Augmenter(AugmentConfig(brightness_contrast=1.0, noise=1.0), STATS)(image, label, seed=3)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out_label.dtype == np.uint8 and out_label.shape == label.shape


def test_spatial_transforms_keep_image_and_label_aligned():
    """The label is a function of the image: after augmentation it must still be that function."""
    size = 16
    yy, xx = np.mgrid[0:size, 0:size]
    image = raw_image(size).copy()
    image[..., 0] = 1000 + 7 * yy + 3 * xx**2  # asymmetric: every flip/rotation changes it
    image[2, 3] = np.nan  # a no-data pixel travels with its IGNORE label

    def rule(img):
        label = (img[..., 0] % 5 < 2).astype(np.uint8)
        label[np.isnan(img).any(axis=-1)] = IGNORE_INDEX
        return label

    augmenter = Augmenter(SPATIAL_ONLY, STATS)
    seen = set()
    for seed in range(40):
        out, out_label = augmenter(image, rule(image), seed)
        np.testing.assert_array_equal(out_label, rule(out))
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(image, axis=None))  # values only move
        seen.add(out[..., 0].tobytes())
    assert len(seen) == 8  # all eight flips/rotations of the square happen


def dihedral_views(array):
    return [np.rot90(flipped, k) for flipped in (array, array[::-1]) for k in range(4)]


def test_free_rotation_and_zoom_move_values_with_their_labels_and_never_invent_one():
    """Nearest-neighbour sampling and a reflected border: every output value is an input value, the
    label still follows the image pixel by pixel (no-data included), and the views are new ones, not
    only the eight flips and quarter turns."""
    size = 32
    yy, xx = np.mgrid[0:size, 0:size]
    image = raw_image(size).copy()
    image[..., 0] = 1000 + 7 * yy + 3 * xx**2
    image[10:13, 9:12] = np.nan

    def rule(img):
        label = (img[..., 0] % 5 < 2).astype(np.uint8)
        label[np.isnan(img).any(axis=-1)] = IGNORE_INDEX
        return label

    augmenter = Augmenter(AFFINE_ONLY, STATS)
    dihedral = {view.tobytes() for view in dihedral_views(image[..., 0])}
    new_views, nodata_seen = 0, 0
    for seed in range(12):
        out, out_label = augmenter(image, rule(image), seed)
        assert out.shape == image.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out_label, rule(out))
        finite = out[np.isfinite(out)]
        assert np.isin(finite, image).all()  # sampled, not interpolated
        assert not (np.isfinite(out).all(axis=-1) & (out == 0).all(axis=-1)).any()  # no filled border
        new_views += out[..., 0].tobytes() not in dihedral
        nodata_seen += int(np.isnan(out).any())
    assert new_views == 12 and nodata_seen > 0


def test_albumentations_would_clip_raw_values():
    """Guards the augment scale decision (pixel-level transforms run on the unit scale, augment.py):
    albumentations clips raw values to [0, 1]. If a release stops clipping, this fails, and the
    round trip through the unit scale can be reconsidered."""
    A = _albumentations()
    transform = A.Compose([A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0)], seed=0)
    out = transform(image=raw_image())["image"]
    assert out.max() <= 1.0  # thousands of reflectance units / kelvin flattened to 1


def test_brightness_contrast_is_an_unclipped_affine_map_on_the_unit_scale():
    image = raw_image(low=0.2, high=0.8)
    out, _ = Augmenter(PIXEL_ONLY, STATS)(image, None, seed=5)
    u_in, u_out = to_unit(image, STATS).ravel(), to_unit(out, STATS).ravel()
    assert u_out.min() > 0.0 and u_out.max() < 1.0  # nothing reached a clip boundary
    gain, offset = np.polyfit(u_in, u_out, 1)
    assert abs(gain - 1) > 1e-3 or abs(offset) > 1e-3  # the transform did something
    np.testing.assert_allclose(u_out, gain * u_in + offset, atol=2e-6)
    # Back on the raw scale: values are raw band values again, not squashed into [0, 1].
    assert out[..., 0].min() > 1000 and out[..., 2].min() > 250


def test_gaussian_noise_is_centred_and_scaled_to_the_band_range():
    config = AugmentConfig(hflip=0, vflip=0, rotate90=0, brightness_contrast=0, noise=1.0, noise_std=(0.02, 0.02))
    image = raw_image(size=64, low=0.3, high=0.7)
    out, _ = Augmenter(config, STATS)(image, None, seed=1)
    delta = to_unit(out, STATS) - to_unit(image, STATS)
    assert abs(delta.mean()) < 2e-3
    np.testing.assert_allclose(delta.std(axis=(0, 1)), 0.02, rtol=0.1)


def test_values_beyond_lo_hi_survive_when_no_pixel_transform_fires():
    image = raw_image(low=-0.5, high=1.5)  # a third of the values beyond lo/hi
    out, _ = Augmenter(SPATIAL_ONLY, STATS)(image, None, seed=2)
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(image, axis=None))
    config = AugmentConfig(hflip=0, vflip=0, rotate90=0, brightness_contrast=1e-9, noise=1e-9)
    out, _ = Augmenter(config, STATS)(image, None, seed=2)  # transforms present but not drawn
    np.testing.assert_array_equal(out, image)


def test_nodata_pixels_keep_their_encoding_under_pixel_transforms():
    image = raw_image()
    image[1, 1] = np.nan
    image[2, 2, 1] = np.inf
    image[3, 3] = 0.0
    out, _ = Augmenter(AugmentConfig(hflip=0, vflip=0, rotate90=0, brightness_contrast=1, noise=1), STATS)(
        image, None, seed=0
    )
    assert np.isnan(out[1, 1]).all() and np.isinf(out[2, 2, 1]) and (out[3, 3] == 0).all()
    assert np.isfinite(np.delete(out.reshape(-1, 3), [25, 50, 75], axis=0)).all()


def test_seeded_and_thread_safe():
    image = raw_image(32)
    label = (image[..., 0] > 3000).astype(np.uint8)
    augmenter = Augmenter(AugmentConfig(brightness_contrast=1.0, noise=1.0), STATS)
    expected = [augmenter(image, label, seed) for seed in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda seed: augmenter(image, label, seed), range(16)))
    for (a, la), (b, lb) in zip(expected, results):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(expected[0][0], expected[1][0])


def test_rotation_is_skipped_for_non_square_images():
    image = raw_image(24)[:, :16]
    for seed in range(10):
        out, label = Augmenter(AugmentConfig(rotate90=1.0), STATS)(image, np.zeros((24, 16), np.uint8), seed)
        assert out.shape == (24, 16, 3) and label.shape == (24, 16)


def test_band_count_must_match_the_statistics():
    with pytest.raises(ValueError, match="4 bands"):
        Augmenter(AugmentConfig(), STATS)(np.zeros((8, 8, 4), np.float32), None, seed=0)
