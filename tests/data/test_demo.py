"""Demo data: the release's layout and channel order, determinism, scene structure, glacial lakes,
and a problem that needs more than one band."""

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef
from sklearn.tree import DecisionTreeClassifier

from keras_glacier.constants import DEFAULT_BANDS
from keras_glacier.data.bands import HKH_CHANNELS, compress_hkh_mask, nodata_mask
from keras_glacier.data.demo import LAKE, NUM_CHANNELS, band_folder_label, demo_tiles, make_demo_dataset


def test_layout_of_the_demo_npy_dataset(demo_npy_root):
    names = sorted(p.name for p in demo_npy_root.iterdir())
    assert len(names) == 24 and "slice_2_img_003.npy" in names and "slice_2_mask_003.npy" in names
    image = np.load(demo_npy_root / "slice_1_img_002.npy")
    mask = np.load(demo_npy_root / "slice_1_mask_002.npy")
    assert image.shape == (64, 64, NUM_CHANNELS) and image.dtype == np.float32
    assert mask.shape == (64, 64, 3) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_channels_follow_the_published_hkh_order():
    tile = next(demo_tiles(scenes=1, tiles_per_scene=1, size=64, seed=0))
    channel = {name: tile.image[..., k] for k, name in enumerate(HKH_CHANNELS)}
    valid = ~nodata_mask(tile.image)
    assert (channel["B6_VCID1"][valid] > 200).all() and (channel["B6_VCID2"][valid] > 200).all()  # kelvin
    assert (np.abs(channel["B1"][valid]) < 1.5).all() and (np.abs(channel["B5"][valid]) < 1.5).all()  # reflectance
    assert set(np.unique(channel["BQA"][valid])) <= {672.0, 1696.0}  # integer bit flags
    assert channel["elevation"][valid].min() > 2000 and 0 <= channel["slope"][valid].min() < 90
    ndsi = (channel["B2"] - channel["B5"]) / np.maximum(channel["B2"] + channel["B5"], 1e-3)  # green, SWIR-1
    np.testing.assert_allclose(channel["NDSI"][valid], ndsi[valid], atol=1e-5)


def test_deterministic_from_the_seed(tmp_path):
    a = make_demo_dataset(tmp_path / "a", scenes=2, tiles_per_scene=2, size=32, seed=5)
    b = make_demo_dataset(tmp_path / "b", scenes=2, tiles_per_scene=2, size=32, seed=5)
    c = make_demo_dataset(tmp_path / "c", scenes=2, tiles_per_scene=2, size=32, seed=6)
    for path in sorted(a.iterdir()):
        assert path.read_bytes() == (b / path.name).read_bytes()
    assert (a / "slice_0_img_000.npy").read_bytes() != (c / "slice_0_img_000.npy").read_bytes()


def test_tiles_of_a_scene_overlap_and_scenes_differ():
    tiles = {(t.scene, t.index): t for t in demo_tiles(scenes=2, tiles_per_scene=4, size=64, seed=0)}
    left, right, below = tiles[0, 0], tiles[0, 1], tiles[0, 2]  # a 2x2 grid with stride 48
    np.testing.assert_array_equal(left.mask[:, 48:], right.mask[:, :16])
    np.testing.assert_array_equal(left.mask[48:], below.mask[:16])
    both = np.isfinite(left.image[:, 48:]) & np.isfinite(right.image[:, :16])
    np.testing.assert_array_equal(left.image[:, 48:][both], right.image[:, :16][both])
    assert not np.array_equal(tiles[0, 0].mask, tiles[1, 0].mask)


def test_region_mask_and_nodata_stripes_appear_in_some_tiles():
    tiles = list(demo_tiles(scenes=6, tiles_per_scene=4, size=64, seed=0))
    cut = [t for t in tiles if 0 < t.mask[..., 2].mean() < 1]
    striped = [t for t in tiles if np.isnan(t.image).any()]
    assert 0 < len(cut) < len(tiles) and 0 < len(striped) < len(tiles) // 2
    for tile in striped:  # stripes are no-data in every channel, and thin
        nan = np.isnan(tile.image)
        np.testing.assert_array_equal(nan.any(axis=-1), nan.all(axis=-1))
        assert nan[..., 0].mean() < 0.4
    glacier = np.mean([((t.mask[..., 0] | t.mask[..., 1]) & t.mask[..., 2]).mean() for t in tiles])
    assert 0.2 < glacier < 0.6  # both classes well represented


def best_threshold_mcc(values, labels):  # every threshold in one sort: sklearn per threshold would take minutes
    """Best |MCC| of ``values > t`` over every threshold t (|.| covers ``values < t`` too)."""
    order = np.argsort(values, kind="stable")
    v, y = values[order], labels[order].astype(np.float64)
    n, positives = len(y), y.sum()
    below = np.cumsum(y)[:-1]  # positives at or below each cut
    predicted = n - np.arange(1, n)  # pixels above each cut
    tp = positives - below
    fp = predicted - tp
    fn = positives - tp
    tn = (n - positives) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    distinct = v[1:] > v[:-1]
    return float(np.nanmax(np.abs(mcc[distinct])))


def test_best_threshold_mcc_helper():
    """Guards the demo's difficulty decision (no single band separates glacier, see the test below):
    that test asserts a *low* best MCC, which a broken helper would pass; checked here against sklearn."""
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert best_threshold_mcc(values, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(1.0)
    assert best_threshold_mcc(values, np.array([1, 1, 1, 0, 0, 0])) == pytest.approx(1.0)
    expected = max(abs(matthews_corrcoef([1, 0, 1, 0, 1, 0], values > t)) for t in values[:-1])
    assert best_threshold_mcc(values, np.array([1, 0, 1, 0, 1, 0])) == pytest.approx(expected)


def pixels_and_labels(tiles):
    x = np.concatenate([t.image.reshape(-1, NUM_CHANNELS) for t in tiles])
    y = np.concatenate([compress_hkh_mask(t.mask).ravel() for t in tiles])
    keep = (y != 255) & ~nodata_mask(x)
    return x[keep], y[keep]


def test_no_single_band_threshold_separates_glacier_but_several_bands_do():
    tiles = list(demo_tiles(scenes=8, tiles_per_scene=4, size=64, seed=0))
    x, y = pixels_and_labels(tiles)
    single = [best_threshold_mcc(x[:, c], y) for c in range(NUM_CHANNELS)]
    best_default = max(single[b] for b in DEFAULT_BANDS)
    assert best_default < 0.6, single
    assert max(single) < 0.65, single  # derived channels (NDSI, elevation, ...) included
    # A depth-4 tree on the default bands, trained on half of the scenes, tested on the others.
    train_x, train_y = pixels_and_labels([t for t in tiles if t.scene < 4])
    test_x, test_y = pixels_and_labels([t for t in tiles if t.scene >= 4])
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(train_x[:, list(DEFAULT_BANDS)], train_y)
    multi = matthews_corrcoef(test_y, tree.predict(test_x[:, list(DEFAULT_BANDS)]))
    assert multi > best_default + 0.15, (multi, single)


def test_glacial_lakes_are_a_separable_class_of_the_multiclass_band_folder_labels():
    """Lakes lie next to glaciers, off them; with glacier and debris they are learnable from the competition bands."""
    tiles = list(demo_tiles(scenes=8, tiles_per_scene=4, size=64, seed=0))
    classes = np.concatenate([t.classes.ravel() for t in tiles])
    assert 0.003 < (classes == LAKE).mean() < 0.05
    for tile in tiles:  # HKH masks have no lake channel: lakes are background there
        lake = tile.classes == LAKE
        assert not (tile.mask[..., 0] | tile.mask[..., 1])[lake].any()
        np.testing.assert_array_equal(band_folder_label(tile, "multiclass")[lake], 255)

    def pixels(subset):
        x = np.concatenate([t.image.reshape(-1, NUM_CHANNELS) for t in subset])
        y = np.concatenate([band_folder_label(t, "multiclass").ravel() for t in subset])
        keep = ~nodata_mask(x)
        return x[keep][:, list(DEFAULT_BANDS)], y[keep]

    train_x, train_y = pixels([t for t in tiles if t.scene < 4])
    test_x, test_y = pixels([t for t in tiles if t.scene >= 4])
    predicted = DecisionTreeClassifier(max_depth=6, random_state=0).fit(train_x, train_y).predict(test_x)
    assert set(np.unique(test_y)) == {0, 85, 170, 255}
    assert matthews_corrcoef(test_y, predicted) > 0.7  # a per-pixel tree; the network adds spatial context
    lake_iou = ((predicted == 255) & (test_y == 255)).sum() / ((predicted == 255) | (test_y == 255)).sum()
    assert lake_iou > 0.4
