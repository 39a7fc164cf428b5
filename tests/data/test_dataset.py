"""GlacierSequence (shapes, determinism, crops, Keras integration) and its on-disk cache."""

import shutil

import numpy as np
import pytest
import tifffile

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.augment import AugmentConfig
from keras_glacier.data.bands import nodata_mask
from keras_glacier.data.cache import TileCache, ValueRange, storage_dtype
from keras_glacier.data.dataset import EpochSync, GlacierSequence
from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import discover
from keras_glacier.data.stats import BandStats, compute_stats, to_unit


def all_batches(sequence):
    return [sequence[i] for i in range(len(sequence))]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def training_sequence(source, stats, **kwargs):
    options = dict(batch_size=3, crop=48, augment=AugmentConfig(), shuffle=True, seed=7, workers=1)
    options.update(kwargs)
    return GlacierSequence(source.samples, stats, source.default_bands, **options)


def test_training_batches_shapes_dtypes_and_labels(demo_npy_source, demo_stats):
    sequence = training_sequence(demo_npy_source, demo_stats)
    assert len(sequence) == 4  # 12 samples, batches of 3
    for x, y in all_batches(sequence):
        assert x.shape == (3, 48, 48, 5) and x.dtype == np.float32
        assert y.shape == (3, 48, 48, 1) and y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0, float(IGNORE_INDEX)}
        assert (y[..., 0][nodata_mask(x)] == IGNORE_INDEX).all()  # no-data pixels are never trained on
        assert np.nanmax(x[..., 4]) > 200  # raw values (kelvin), not a unit scale


def test_validation_batches_cover_every_sample_once(demo_npy_source, demo_stats):
    sequence = GlacierSequence(demo_npy_source.samples, demo_stats, demo_npy_source.default_bands, batch_size=5)
    batches = all_batches(sequence)
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    x = np.concatenate([x for x, _ in batches])
    first = np.load(demo_npy_source.samples[0].image_paths[0])[..., list(demo_npy_source.default_bands)]
    np.testing.assert_array_equal(x[0], first)  # no augmentation, no crop: the tile as stored


def test_deterministic_given_seed_and_epoch(demo_npy_source, demo_stats):
    a, b = training_sequence(demo_npy_source, demo_stats), training_sequence(demo_npy_source, demo_stats)
    epoch0 = all_batches(a)
    assert_batches_equal(epoch0, all_batches(b))
    a.on_epoch_end()
    b.on_epoch_end()
    epoch1 = all_batches(a)
    assert_batches_equal(epoch1, all_batches(b))
    assert not np.array_equal(epoch0[0][1], epoch1[0][1])  # a new order and new draws each epoch
    b.set_epoch(0)
    assert_batches_equal(epoch0, all_batches(b))
    other_seed = training_sequence(demo_npy_source, demo_stats, seed=8)
    assert not np.array_equal(epoch0[0][1], other_seed[0][1])


def test_centre_crop_and_padding(demo_npy_source, demo_stats):
    bands = demo_npy_source.default_bands
    centre = GlacierSequence(demo_npy_source.samples[:1], demo_stats, bands, batch_size=1, crop=32)
    x, _ = centre[0]
    full = np.load(demo_npy_source.samples[0].image_paths[0])[..., list(bands)]
    np.testing.assert_array_equal(x[0], full[16:48, 16:48])
    padded = GlacierSequence(demo_npy_source.samples[:2], demo_stats, bands, batch_size=2, crop=80, shuffle=True)
    x, y = padded[0]
    assert x.shape == (2, 80, 80, 5)
    assert np.isnan(x[:, 64:]).all() and (y[:, 64:] == IGNORE_INDEX).all()


def test_cache_gives_the_same_batches(tmp_path, demo_npy_source, demo_stats):
    plain = all_batches(training_sequence(demo_npy_source, demo_stats))
    cached_sequence = training_sequence(demo_npy_source, demo_stats, cache_dir=tmp_path)
    assert cached_sequence.cache.dtype == np.float32  # kelvin values are too coarse in float16
    assert_batches_equal(plain, all_batches(cached_sequence))
    files = {p.suffix: p for p in tmp_path.iterdir()}
    assert len(files) == 3 and set(files) == {".json", ".images", ".labels"}
    # Selected bands only, stored once: 12 tiles x 64 x 64 x 5 float32, labels one byte per pixel.
    assert files[".images"].stat().st_size == 12 * 64 * 64 * 5 * 4
    assert files[".labels"].stat().st_size == 12 * 64 * 64
    # A second dataset with the same samples reuses the files.
    stamp = files[".images"].stat().st_mtime_ns
    again = training_sequence(demo_npy_source, demo_stats, cache_dir=tmp_path)
    assert files[".images"].stat().st_mtime_ns == stamp and again.cache.meta_path == files[".json"]
    validation = GlacierSequence(demo_npy_source.samples, demo_stats, demo_npy_source.default_bands, cache_dir=tmp_path)
    plain_validation = GlacierSequence(demo_npy_source.samples, demo_stats, demo_npy_source.default_bands)
    assert_batches_equal(all_batches(plain_validation), all_batches(validation))


def integer_band_folders(root, dtype=np.uint16, offset=0):
    rng = np.random.default_rng(0)
    for band in range(1, 4):
        (root / f"Band{band}").mkdir(parents=True)
        for tile in range(3):
            data = (rng.integers(1, 60000, (40, 40)) + offset).astype(dtype)
            tifffile.imwrite(root / f"Band{band}" / f"B{band}_x_0{tile}_01.tif", data)
    (root / "label").mkdir()
    for tile in range(3):
        tifffile.imwrite(root / "label" / f"Y_0{tile}_01.tif", (rng.random((40, 40)) > 0.5).astype(np.uint8) * 255)
    return discover(root)


def test_integer_tiles_are_cached_in_their_native_dtype_exactly(tmp_path):
    source = integer_band_folders(tmp_path / "data")
    stats = compute_stats(source.samples, source.default_bands)
    options = dict(batch_size=2, crop=32, augment=AugmentConfig(), shuffle=True, seed=1)
    plain = GlacierSequence(source.samples, stats, source.default_bands, **options)
    cached = GlacierSequence(source.samples, stats, source.default_bands, cache_dir=tmp_path / "cache", **options)
    assert cached.cache.dtype == np.uint16
    assert_batches_equal(all_batches(plain), all_batches(cached))


def test_float16_cache_error_is_below_a_thousandth_of_the_band_range(tmp_path):
    rng = np.random.default_rng(0)
    for j in range(3):
        np.save(tmp_path / f"slice_0_image_{j}.npy", rng.uniform(0.0, 0.9, (32, 32, 4)).astype(np.float32))
        np.save(tmp_path / f"slice_0_mask_{j}.npy", np.ones((32, 32, 3), np.uint8))
    source = discover(tmp_path)
    bands = (0, 1, 3)
    stats = compute_stats(source.samples, bands)
    cache = TileCache.open_or_build(tmp_path / "cache", source.samples, bands, stats)
    assert cache.dtype == np.float16
    for index, sample in enumerate(source.samples):
        exact = np.load(sample.image_paths[0])[..., list(bands)]
        image, _ = cache.read(index)
        assert np.abs(to_unit(image, stats) - to_unit(exact, stats)).max() <= 1e-3


def test_storage_dtype_rules():
    unit = BandStats(lo=(0.0,), hi=(1.0,), mean=(0.5,), std=(0.2,))
    kelvin = BandStats(lo=(250.0,), hi=(300.0,), mean=(0.5,), std=(0.2,))

    def dtype_of(*arrays, stats=unit):
        values = ValueRange()
        for array in arrays:
            values.update(np.asarray(array, np.float32))
        return storage_dtype(values, stats)

    assert dtype_of([0, 255]) == np.uint8
    assert dtype_of([0, 255], [300]) == np.uint16  # widens as tiles come in
    assert dtype_of([-3, 1000]) == np.int16
    assert dtype_of([-3, 40000]) == np.int32
    assert dtype_of([0.5, 0.25]) == np.float16
    assert dtype_of([0, 1, np.nan]) == np.float16  # NaN needs a float
    assert dtype_of([0.5, 70000.5]) == np.float32  # would overflow float16
    assert dtype_of([260.5, 280.25], stats=kelvin) == np.float32  # float16 steps of 0.25 K: too coarse


def test_cache_widens_when_a_later_tile_does_not_fit(tmp_path):
    for j, image in enumerate([np.full((8, 8, 2), 3.0), np.full((8, 8, 2), 70000.5)]):
        np.save(tmp_path / f"slice_0_image_{j}.npy", image.astype(np.float32))
        np.save(tmp_path / f"slice_0_mask_{j}.npy", np.ones((8, 8, 3), np.uint8))
    source = discover(tmp_path)
    stats = BandStats(lo=(0.0, 0.0), hi=(1e5, 1e5), mean=(0.5, 0.5), std=(0.2, 0.2))
    cache = TileCache.open_or_build(tmp_path / "cache", source.samples, (0, 1), stats)
    assert cache.dtype == np.float32
    assert cache.read(0)[0][0, 0, 0] == 3.0 and cache.read(1)[0][0, 0, 0] == 70000.5
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".images", ".json", ".labels"]


class RecordingSequence(GlacierSequence):
    """Notes the epoch of every batch Keras asks for."""

    def __getitem__(self, index):
        self.calls.append(self.epoch)
        return super().__getitem__(index)


def test_keras_fit_with_worker_threads_and_epoch_sync(demo_npy_source, demo_stats):
    import keras

    sequence = RecordingSequence(
        demo_npy_source.samples, demo_stats, demo_npy_source.default_bands, batch_size=4, crop=32,
        augment=AugmentConfig(), shuffle=True, workers=2,
    )  # fmt: skip
    sequence.calls = []
    inputs = keras.Input((32, 32, 5))
    finite = keras.layers.Lambda(lambda t: keras.ops.where(keras.ops.isfinite(t), t, 0.0))(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(finite))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(sequence, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[EpochSync(sequence)])
    served = sequence.calls[-2 * len(sequence) :]  # before these: batches Keras drew to build the optimizer
    assert served == [1] * len(sequence) + [2] * len(sequence)


def test_dataset_input_errors(demo_npy_source, demo_tiff_root, tmp_path, demo_stats):
    bands = demo_npy_source.default_bands
    with pytest.raises(InputError, match="5 bands selected but the statistics describe 2"):
        GlacierSequence(demo_npy_source.samples, BandStats((0, 0), (1, 1), (0, 0), (1, 1)), bands)
    shutil.copytree(demo_tiff_root, tmp_path / "data", ignore=shutil.ignore_patterns("label"))
    unlabelled = discover(tmp_path / "data")
    with pytest.raises(InputError, match=r"B2_B2_masked_00_00\.tif: no label file"):
        GlacierSequence(unlabelled.samples, demo_stats, unlabelled.default_bands)
    stats = compute_stats(demo_npy_source.samples, bands)
    small = tmp_path / "small"
    small.mkdir()
    for j, size in enumerate((16, 32)):
        np.save(small / f"slice_0_image_{j}.npy", np.ones((size, size, 15), np.float32))
        np.save(small / f"slice_0_mask_{j}.npy", np.ones((size, size, 3), np.uint8))
    mixed = GlacierSequence(discover(small).samples, stats, bands, batch_size=2)
    with pytest.raises(InputError, match=r"tiles of different sizes in one batch \(slice_0_image_0\.npy"):
        mixed[0]


def test_sampled_epochs_draw_crops_in_proportion_to_area(demo_npy_source, demo_stats):
    """samples_per_epoch: the epoch is that many crops; a tile drawn twice gets two different crops."""
    sequence = training_sequence(demo_npy_source, demo_stats, samples_per_epoch=30, batch_size=4, augment=None)
    assert len(sequence) == 7  # 30 crops in batches of 4, the incomplete one dropped
    order = sequence._epoch_state[1]
    assert len(order) == 30 and np.bincount(order, minlength=12).min() >= 2  # 12 equal tiles: 2 or 3 each
    first = all_batches(sequence)
    assert_batches_equal(first, all_batches(training_sequence(
        demo_npy_source, demo_stats, samples_per_epoch=30, batch_size=4, augment=None)))
    x = np.concatenate([x for x, _ in first])
    repeated = int(np.flatnonzero(np.bincount(order[:28]) >= 2)[0])
    a, b = np.flatnonzero(order[:28] == repeated)[:2]
    assert not np.array_equal(x[a], x[b], equal_nan=True)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        GlacierSequence(demo_npy_source.samples, demo_stats, demo_npy_source.default_bands, samples_per_epoch=8)
