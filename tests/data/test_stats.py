"""Band statistics: valid pixels only, stats.json (README, Data formats), unit scale, JSON round trip."""

import json

import numpy as np
import pytest

from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import discover
from keras_glacier.data.stats import BandStats, compute_stats, from_unit, stats_from_pixels, to_unit

BANDS = (0, 2)


@pytest.fixture
def dirty_dataset(tmp_path):
    """Two 16x16 slices with NaN, inf and all-zero pixels; returns (root, valid pixels of BANDS)."""
    rng = np.random.default_rng(3)
    valid = []
    for j in range(2):
        image = rng.uniform(100, 5000, (16, 16, 3)).astype(np.float32)
        image[0, :, 0] = np.nan
        image[1, :4, 2] = np.inf
        image[2, :5, 1] = -np.inf  # an unselected band: these pixels stay valid
        image[3, :6] = 0.0  # all bands zero: no-data
        image[4, :3, [0, 2]] = 0.0  # selected bands zero: no-data for this selection
        image[5, 0, 0] = 1e9  # a huge but finite value counts
        np.save(tmp_path / f"slice_0_image_{j}.npy", image)
        mask = np.ones((16, 16, 3), np.uint8)
        mask[..., 2] = 0  # outside the region: still valid image data for statistics
        np.save(tmp_path / f"slice_0_mask_{j}.npy", mask)
        selected = image[..., list(BANDS)].reshape(-1, len(BANDS))
        ok = np.isfinite(selected).all(axis=1) & (selected != 0).any(axis=1)
        valid.append(selected[ok])
    return tmp_path, np.concatenate(valid).astype(np.float64)


def test_stats_use_valid_pixels_only(dirty_dataset):
    root, valid = dirty_dataset
    stats = compute_stats(discover(root).samples, BANDS, percentiles=(2.0, 98.0))
    assert stats.num_pixels == len(valid) == 2 * 256 - 2 * (16 + 4 + 6 + 3)
    lo, hi = np.percentile(valid, [2.0, 98.0], axis=0)
    np.testing.assert_allclose(stats.lo, lo, rtol=1e-12)
    np.testing.assert_allclose(stats.hi, hi, rtol=1e-12)
    u = np.clip((valid - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(stats.mean, u.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, u.std(axis=0), rtol=1e-9)
    assert stats.bands == BANDS and stats.percentiles == (2.0, 98.0)
    assert all(np.isfinite(v) for v in stats.lo + stats.hi + stats.mean + stats.std)


def test_subsampling_bounds_the_work_and_stays_close(dirty_dataset):
    root, valid = dirty_dataset
    samples = discover(root).samples
    full = compute_stats(samples, BANDS)
    small = compute_stats(samples, BANDS, max_pixels=200, seed=1)
    assert small.num_pixels == 200
    np.testing.assert_allclose(small.mean, full.mean, atol=0.05)
    one_tile = compute_stats(samples, BANDS, max_tiles=1)
    assert one_tile.num_pixels == len(valid) // 2
    assert compute_stats(samples, BANDS, max_pixels=200, seed=1) == small  # seeded


def test_no_valid_pixels_is_an_input_error(tmp_path):
    image = np.zeros((4, 4, 3), np.float32)
    image[0, 0, 0] = np.nan  # not all-NaN (so the tile itself is readable), but nothing valid
    np.save(tmp_path / "slice_0_image_0.npy", image)
    np.save(tmp_path / "slice_0_mask_0.npy", np.ones((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="no valid pixels"):
        compute_stats(discover(tmp_path).samples, BANDS)


def test_constant_band_gets_floored_range_and_std():
    pixels = np.stack([np.full(50, 7.0), np.linspace(0, 1, 50)], axis=1)
    stats = stats_from_pixels(pixels)
    assert stats.hi[0] - stats.lo[0] == pytest.approx(1e-6)
    assert stats.std[0] == pytest.approx(1e-6)


def test_unit_scale_round_trip_and_model_semantics():
    stats = BandStats(lo=(100.0, -5.0), hi=(300.0, 5.0), mean=(0.5, 0.5), std=(0.2, 0.2))
    x = np.array([[100.0, -5.0], [200.0, 0.0], [400.0, -10.0], [np.nan, np.inf]], np.float32)
    u = to_unit(x, stats)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, [[0, 0], [0.5, 0.5], [1, 0], [0, 0]])  # clipped; non-finite -> 0 (= lo)
    back = from_unit(u[:2], stats)
    np.testing.assert_allclose(back, x[:2], rtol=1e-6)
    np.testing.assert_allclose(to_unit(x, stats.to_dict()), u)  # dicts work too


def test_json_round_trip_and_format(tmp_path, demo_stats, demo_npy_source):
    path = tmp_path / "stats.json"
    demo_stats.save(path)
    data = json.loads(path.read_text())
    assert set(data) >= {"lo", "hi", "mean", "std", "bands", "percentiles", "num_pixels"}
    assert all(len(data[k]) == 5 for k in ("lo", "hi", "mean", "std"))
    assert data["bands"] == [0, 1, 2, 4, 5]
    assert BandStats.load(path) == demo_stats
    named = compute_stats(demo_npy_source.samples[:2], (0, 1), band_names=("B1", "B2"), max_pixels=1000)
    named.save(path)
    assert json.loads(path.read_text())["band_names"] == ["B1", "B2"] and BandStats.load(path) == named
    assert all(0 < m < 1 for m in demo_stats.mean) and all(h > lo for lo, h in zip(demo_stats.lo, demo_stats.hi))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "cannot read stats JSON"),
        ('{"lo": [0], "hi": [1], "mean": [0.5]}', "missing std"),
        ('{"lo": [0, 1], "hi": [1], "mean": [0.5], "std": [0.1]}', "one value per band"),
        ('{"lo": ["a"], "hi": [1], "mean": [0.5], "std": [0.1]}', "lists of numbers"),
        ('{"lo": [NaN], "hi": [1], "mean": [0.5], "std": [0.1]}', "must be finite"),
    ],
)
def test_bad_stats_files(tmp_path, content, message):
    path = tmp_path / "stats.json"
    path.write_text(content)
    with pytest.raises(InputError, match=rf"stats\.json: .*{message}"):
        BandStats.load(path)
    with pytest.raises(InputError, match=r"missing\.json: stats file not found"):
        BandStats.load(tmp_path / "missing.json")
