"""Finding, pairing and reading tiles: both dataset layouts, both HKH naming schemes, band names, tasks,
and every bad input as a named one-line InputError."""

import os
import shutil

import numpy as np
import pytest
import tifffile

from keras_glacier.constants import DEFAULT_BANDS, IGNORE_INDEX
from keras_glacier.data.demo import make_demo_band_folders, make_demo_dataset
from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import NPY, TIFF, discover, read_sample, tile_scene_id

SIZE = 8


def slice_arrays(i, j, channels=15):
    """An image whose values encode (i, j, channel) and a mask whose one glacier pixel encodes (i, j)."""
    image = np.empty((SIZE, SIZE, channels), np.float32)
    for c in range(channels):
        image[..., c] = 1000 * i + 10 * j + c / 100
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[..., 2] = 1
    mask[(i * 3 + j) % SIZE, (i + 5 * j) % SIZE, j % 2] = 1
    return image, mask


def write_slice(root, i, j, image=None, mask=None, image_name=None, mask_name=None):
    default_image, default_mask = slice_arrays(i, j)
    if image is not False:
        np.save(root / (image_name or f"slice_{i}_image_{j}.npy"), default_image if image is None else image)
    if mask is not False:
        np.save(root / (mask_name or f"slice_{i}_mask_{j}.npy"), default_mask if mask is None else mask)


def assert_pairs_match_ids(source, keys):
    by_id = {s.sample_id: s for s in source.samples}
    for i, j in keys:
        sample = by_id[f"slice_{i}_image_{j}"]
        image, label = read_sample(sample, DEFAULT_BANDS)
        expected_image, expected_mask = slice_arrays(i, j)
        np.testing.assert_array_equal(image, expected_image[..., list(DEFAULT_BANDS)])
        np.testing.assert_array_equal(label, expected_mask[..., 0] | expected_mask[..., 1])


def test_npy_pairs_by_numeric_ids_not_by_name_order(tmp_path):
    keys = [(10, 2), (2, 10), (1, 1), (1, 11), (3, 0)]
    order = np.random.default_rng(0).permutation(len(keys))
    for k in order:  # written in a shuffled order
        write_slice(tmp_path, *keys[k])
    # Zero-padded on one side only: still the same (i, j) id.
    write_slice(tmp_path, 4, 7, image_name="slice_04_image_007.npy", mask_name="slice_4_mask_7.npy")
    (tmp_path / "notes.txt").write_text("not a slice")
    source = discover(tmp_path)
    assert source.kind == NPY
    assert [s.sample_id for s in source.samples] == [
        "slice_1_image_1", "slice_1_image_11", "slice_2_image_10", "slice_3_image_0", "slice_04_image_007",
        "slice_10_image_2",
    ]  # fmt: skip
    assert {s.scene_id for s in source.samples} == {"slice_1", "slice_2", "slice_3", "slice_4", "slice_10"}
    assert_pairs_match_ids(source, keys)
    image, label = read_sample(next(s for s in source.samples if s.name == "slice_04_image_007.npy"), DEFAULT_BANDS)
    np.testing.assert_array_equal(image[0, 0], np.float32([4070 + c / 100 for c in DEFAULT_BANDS]))


def test_npy_reads_only_the_window_and_marks_region_and_nodata(tmp_path):
    image, mask = slice_arrays(1, 2)
    image[0, 0, 4] = np.nan  # a selected band: no-data
    image[0, 1, 3] = np.nan  # an unselected band: still valid
    image[1, 0] = 0.0  # all channels zero: no-data
    mask[2, 2, 2] = 0  # outside the region
    write_slice(tmp_path, 1, 2, image=image, mask=mask)
    sample = discover(tmp_path).samples[0]
    full, label = read_sample(sample, DEFAULT_BANDS)
    assert label[0, 0] == IGNORE_INDEX and label[1, 0] == IGNORE_INDEX and label[2, 2] == IGNORE_INDEX
    assert label[0, 1] != IGNORE_INDEX
    part, part_label = read_sample(sample, DEFAULT_BANDS, window=lambda shape: (1, 2, 3, 4))
    np.testing.assert_array_equal(part, full[1:4, 2:6])
    np.testing.assert_array_equal(part_label, label[1:4, 2:6])


def test_demo_npy_source(demo_npy_source):
    assert demo_npy_source.kind == NPY and demo_npy_source.has_labels
    assert len(demo_npy_source.samples) == 12
    image, label = read_sample(demo_npy_source.samples[0], demo_npy_source.default_bands)
    assert image.shape == (64, 64, 5) and image.dtype == np.float32
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, IGNORE_INDEX}


def write_band_tile(root, folder, name, array):
    (root / folder).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / folder / name, array)


def test_tiff_matches_differently_named_band_files_and_orders_folders_by_number(tmp_path):
    bands = 10
    ids = ["02_07", "03_01"]
    for band in range(1, bands + 1):
        for n, tile_id in enumerate(ids):
            value = np.full((SIZE, SIZE), 100 * band + n, np.uint16)
            write_band_tile(tmp_path, f"Band{band}", f"B{band + 1}_B{band + 1}_masked_{tile_id}.tif", value)
    for n, tile_id in enumerate(ids):
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[n, n] = 255
        write_band_tile(tmp_path, "labels", f"Y_output_resized_{tile_id}.tif", label)
    source = discover(tmp_path)
    assert source.kind == TIFF
    # Named by the files' prefixes (B2 in B2_B2_masked_...), in band-folder order: Band10 last, not after Band1.
    assert source.band_names == tuple(f"B{b + 1}" for b in range(1, bands + 1))
    assert source.default_bands == tuple(range(bands))
    assert [s.sample_id for s in source.samples] == ids
    assert [s.scene_id for s in source.samples] == ["02", "03"]
    assert source.samples[0].name == "B2_B2_masked_02_07.tif"
    for n, sample in enumerate(source.samples):
        image, label = read_sample(sample, source.default_bands)
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image[0, 0], [100 * b + n for b in range(1, bands + 1)])
        assert label.sum() == 1 and label[n, n] == 1
    image, _ = read_sample(source.samples[0], source.resolve_bands([9, 0]))
    np.testing.assert_array_equal(image[0, 0], [1000, 100])
    assert source.resolve_bands("B11,b2") == (9, 0)
    with pytest.raises(InputError, match=r"bands \[0, 1, 2, 4, 5, 10\] go beyond the 10 channels"):
        source.resolve_bands(DEFAULT_BANDS + (10,))


def test_demo_tiff_source(demo_tiff_source, demo_npy_root):
    assert demo_tiff_source.kind == TIFF and demo_tiff_source.has_labels
    assert demo_tiff_source.band_names == ("B2", "B3", "B4", "B6", "B10")  # GlacierHack's Landsat 8 names
    assert demo_tiff_source.select_bands("competition").indices == (0, 1, 2, 3, 4)
    sample = demo_tiff_source.samples[0]
    assert [os.path.basename(p) for p in sample.image_paths] == [
        "B2_B2_masked_00_00.tif", "B3_B3_masked_00_00.tif", "B4_B4_masked_00_00.tif", "B6_B6_masked_00_00.tif",
        "B10_B10_masked_00_00.tif",
    ]  # fmt: skip
    assert os.path.basename(sample.label_path) == "Y_output_resized_00_00.tif"
    image, label = read_sample(sample, demo_tiff_source.default_bands)
    # Same scene generator as the npy demo: tile 00_00 is slice_0_img_000 (preset competition).
    npy_image = np.load(demo_npy_root / "slice_0_img_000.npy")[..., list(DEFAULT_BANDS)]
    np.testing.assert_array_equal(image, npy_image)
    assert set(np.unique(label)) <= {0, 1, IGNORE_INDEX}


def test_tiff_without_label_folder_reads_images_only(tmp_path, demo_tiff_root):
    shutil.copytree(demo_tiff_root, tmp_path / "data", ignore=shutil.ignore_patterns("label"))
    source = discover(tmp_path / "data")
    assert not source.has_labels
    image, label = read_sample(source.samples[0], source.default_bands)
    assert image.shape == (64, 64, 5) and label is None


def test_tile_scene_id():
    assert tile_scene_id("02_07") == "02"
    assert tile_scene_id("r1_c2_13") == "r1_c2"
    assert tile_scene_id("001") == "001"
    assert tile_scene_id("a_b") == "a_b"


# ----------------------------------------------------------------------------------------------
# Bad inputs: each raises InputError (a ValueError) whose message names the offending file.
# ----------------------------------------------------------------------------------------------


def read_all(root):
    source = discover(root)
    for sample in source.samples:
        read_sample(sample, source.default_bands)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match=r"nope: dataset folder not found"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: dataset folder is empty"):
        discover(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.png").write_bytes(b"x")
    (tmp_path / "other" / "misc").mkdir()
    with pytest.raises(InputError, match=r"other: no slice_<scene>_img_<k>\.npy or slice_<i>_image_<j>\.npy files"):
        discover(tmp_path / "other")
    assert issubclass(InputError, ValueError)


def test_image_without_mask_and_mask_without_image(tmp_path):
    (tmp_path / "a").mkdir()
    write_slice(tmp_path / "a", 1, 1)
    write_slice(tmp_path / "a", 1, 2, mask=False)
    with pytest.raises(InputError, match=r"slice_1_image_2\.npy: no mask file slice_1_mask_2\.npy"):
        discover(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_slice(tmp_path / "b", 1, 1)
    write_slice(tmp_path / "b", 3, 2, image=False)
    with pytest.raises(InputError, match=r"slice_3_mask_2\.npy: no image file slice_3_image_2\.npy"):
        discover(tmp_path / "b")
    (tmp_path / "c").mkdir()
    write_slice(tmp_path / "c", 1, 1)
    write_slice(tmp_path / "c", 1, 1, image_name="slice_01_image_1.npy", mask=False)
    with pytest.raises(InputError, match=r"slice_1_image_1\.npy: same slice id as slice_01_image_1\.npy"):
        discover(tmp_path / "c")


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((SIZE, SIZE, 4), np.float32), None, r"slice_1_image_1\.npy: preset competition needs blue, .*"
         r"this dataset's bands are channel0, channel1, channel2, channel3"),
        (np.zeros((SIZE, SIZE), np.float32), None, r"slice_1_image_1\.npy: expected an \(H, W, channels\) image"),
        (None, np.zeros((SIZE, SIZE, 4), np.uint8), r"slice_1_mask_1\.npy: a mask of shape \(8, 8, 4\) fits no"),
        (None, np.full((SIZE, SIZE, 3), 7, np.uint8), r"slice_1_mask_1\.npy: mask values must be 0 or 1"),
        (None, np.ones((SIZE, SIZE + 1, 3), np.uint8), r"slice_1_mask_1\.npy: mask size \(8, 9\) differs"),
        (np.full((SIZE, SIZE, 15), np.nan, np.float32), None, r"slice_1_image_1\.npy: every pixel is NaN/inf"),
    ],
)
def test_bad_npy_contents(tmp_path, image, mask, message):
    write_slice(tmp_path, 1, 1, image=image, mask=mask)
    with pytest.raises(InputError, match=message):
        read_all(tmp_path)


def test_corrupt_npy(tmp_path):
    write_slice(tmp_path, 1, 1)
    (tmp_path / "slice_1_image_1.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"slice_1_image_1\.npy: cannot read \.npy file"):
        read_all(tmp_path)


@pytest.fixture
def tiff_copy(tmp_path, demo_tiff_root):
    return shutil.copytree(demo_tiff_root, tmp_path / "data")


def test_missing_band_folder(tiff_copy):
    shutil.rmtree(tiff_copy / "Band3")
    with pytest.raises(InputError, match=r"Band3: missing band folder Band3"):
        discover(tiff_copy)


def test_tile_missing_in_one_band(tiff_copy):
    (tiff_copy / "Band4" / "B6_B6_masked_01_02.tif").unlink()
    with pytest.raises(InputError, match=r"Band4: no file for tile '01_02'"):
        discover(tiff_copy)


def test_extra_tile_in_one_band(tiff_copy):
    shutil.copy(tiff_copy / "Band2" / "B3_B3_masked_01_02.tif", tiff_copy / "Band2" / "B3_B3_masked_07_07.tif")
    with pytest.raises(InputError, match=r"B3_B3_masked_07_07\.tif: tile '07_07' has no matching file"):
        discover(tiff_copy)


def test_tile_without_label(tiff_copy):
    (tiff_copy / "label" / "Y_output_resized_00_01.tif").unlink()
    with pytest.raises(InputError, match=r"label: no label file for tile '00_01'"):
        discover(tiff_copy)


def test_mismatched_band_sizes(tiff_copy):
    tifffile.imwrite(tiff_copy / "Band2" / "B3_B3_masked_00_01.tif", np.ones((32, 32), np.float32))
    with pytest.raises(InputError, match=r"B3_B3_masked_00_01\.tif: size \(32, 32\) differs"):
        read_all(tiff_copy)


def test_label_size_and_values(tiff_copy):
    label_path = tiff_copy / "label" / "Y_output_resized_00_01.tif"
    tifffile.imwrite(label_path, np.zeros((32, 32), np.uint8))
    with pytest.raises(InputError, match=r"Y_output_resized_00_01\.tif: label size \(32, 32\) differs"):
        read_all(tiff_copy)
    tifffile.imwrite(label_path, np.full((64, 64), 128, np.uint8))
    with pytest.raises(InputError, match=r"Y_output_resized_00_01\.tif: label values must be 0/1 or 0/255"):
        read_all(tiff_copy)


def test_corrupt_tiff(tiff_copy):
    (tiff_copy / "Band5" / "B10_B10_masked_01_00.tif").write_bytes(b"II*\x00 broken")
    with pytest.raises(InputError, match=r"B10_B10_masked_01_00\.tif: cannot read TIFF"):
        read_all(tiff_copy)


def test_all_nan_tiff_tile(tiff_copy):
    nan = np.full((64, 64), np.nan, np.float32)
    for band, prefix in enumerate(("B2_B2", "B3_B3", "B4_B4", "B6_B6", "B10_B10"), start=1):
        tifffile.imwrite(tiff_copy / f"Band{band}" / f"{prefix}_masked_00_02.tif", nan)
    with pytest.raises(InputError, match=r"B2_B2_masked_00_02\.tif: every pixel is NaN/inf"):
        read_all(tiff_copy)


def test_several_label_folders(tiff_copy):
    shutil.copytree(tiff_copy / "label", tiff_copy / "masks")
    with pytest.raises(InputError, match=r"several label folders \(label, masks\)"):
        discover(tiff_copy)


@pytest.mark.parametrize(
    "array,version",
    [
        (np.arange(24, dtype=np.float32).reshape(2, 3, 4), (1, 0)),
        (np.asfortranarray(np.arange(12, dtype=">i2").reshape(3, 4)), (1, 0)),
        (np.arange(6, dtype=np.uint8).reshape(2, 3), (2, 0)),
        (np.ones((2, 2), bool), (3, 0)),
    ],
    ids=["float32", "big-endian-fortran", "version-2", "version-3-bool"],
)
def test_npy_headers_are_read_without_ast(tmp_path, monkeypatch, array, version):
    """numpy's header parser (ast) can crash under threads on CPython < 3.11.8; plain headers avoid it."""
    import ast

    from keras_glacier.data import sources

    path = tmp_path / "a.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, array, version=version)

    def no_ast(*_args, **_kwargs):
        raise AssertionError("ast used")

    monkeypatch.setattr(ast, "literal_eval", no_ast)
    loaded = sources._load_npy(str(path))
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    assert isinstance(loaded, np.memmap)


def test_unusual_npy_headers_fall_back_to_numpy(tmp_path):
    from keras_glacier.data import sources

    path = tmp_path / "s.npy"
    np.save(path, np.float32(3.5))  # 0-d: shape ()
    assert sources._npy_layout(str(path)) is None
    assert float(sources._load_npy(str(path))) == 3.5
    structured = tmp_path / "r.npy"
    np.save(structured, np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")]))
    assert sources._npy_layout(str(structured)) is None
    assert sources._load_npy(str(structured)).dtype.names == ("a", "b")
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="o.npy: cannot read .npy file"):
        sources._load_npy(str(objects))
    for name, content in (("text.npy", b"slice 1, not an array"), ("empty.npy", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=rf"{name}: not a \.npy file \(no NumPy header; truncated, or another "
                                             r"format\?\)$"):
            sources._load_npy(str(tmp_path / name))


# ----------------------------------------------------------------------------------------------
# The HKH release as published: its naming, float64 with NaN, its mask layouts, the tasks.
# ----------------------------------------------------------------------------------------------


def test_release_naming_pairs_by_scene_and_index(tmp_path):
    write_slice(tmp_path, 3, 7, image_name="slice_3_img_007.npy", mask_name="slice_03_mask_7.npy")
    write_slice(tmp_path, 3, 10, image_name="slice_3_img_010.npy", mask_name="slice_3_mask_010.npy")
    write_slice(tmp_path, 5, 2, image_name="slice_LE07_134040_img_002.npy", mask_name="slice_LE07_134040_mask_002.npy")
    source = discover(tmp_path)
    assert [s.sample_id for s in source.samples] == ["slice_3_img_007", "slice_3_img_010", "slice_LE07_134040_img_002"]
    assert [s.scene_id for s in source.samples] == ["slice_3", "slice_3", "slice_LE07_134040"]
    assert [os.path.basename(s.label_path) for s in source.samples] == [
        "slice_03_mask_7.npy", "slice_3_mask_010.npy", "slice_LE07_134040_mask_002.npy",
    ]  # fmt: skip
    for sample, (i, j) in zip(source.samples, [(3, 7), (3, 10), (5, 2)]):
        image, label = read_sample(sample, DEFAULT_BANDS)
        expected_image, expected_mask = slice_arrays(i, j)
        np.testing.assert_array_equal(image, expected_image[..., list(DEFAULT_BANDS)])
        np.testing.assert_array_equal(label, expected_mask[..., 0] | expected_mask[..., 1])
    assert source.band_names[5] == "B6_VCID1" and source.mask_layout == "region"


def test_both_naming_schemes_in_one_folder_are_one_line_error_naming_one_of_each(tmp_path):
    write_slice(tmp_path, 1, 1)
    write_slice(tmp_path, 2, 1, image_name="slice_2_img_001.npy")
    with pytest.raises(InputError, match=r"two slice naming schemes in one folder \(slice_2_img_001\.npy and "
                       r"slice_1_image_1\.npy\); keep one$") as error:
        discover(tmp_path)
    assert "\n" not in str(error.value)


def test_release_image_without_mask_names_the_expected_mask(tmp_path):
    write_slice(tmp_path, 1, 1, image_name="slice_1_img_001.npy", mask=False)
    with pytest.raises(InputError, match=r"slice_1_img_001\.npy: no mask file slice_1_mask_001\.npy for this image$"):
        discover(tmp_path)


def test_float64_slices_with_nan_read_as_float32_with_nan_ignored(tmp_path):
    image, mask = slice_arrays(1, 1)
    image = image.astype(np.float64)
    image[:2] = np.nan  # outside the scene footprint
    names = {"image_name": "slice_1_img_001.npy", "mask_name": "slice_1_mask_001.npy"}
    write_slice(tmp_path, 1, 1, image=image, mask=mask, **names)
    read, label = read_sample(discover(tmp_path).samples[0], DEFAULT_BANDS)
    assert read.dtype == np.float32 and np.isnan(read[:2]).all()
    np.testing.assert_array_equal(read[2:], image[2:][..., list(DEFAULT_BANDS)].astype(np.float32))
    assert (label[:2] == IGNORE_INDEX).all() and not (label[2:] == IGNORE_INDEX).any()


def test_every_mask_layout_gives_the_same_labels_of_the_demo(tmp_path):
    region = discover(make_demo_dataset(tmp_path / "r", scenes=2, tiles_per_scene=2, size=32))
    onehot = discover(make_demo_dataset(tmp_path / "o", scenes=2, tiles_per_scene=2, size=32, mask_layout="onehot"))
    two = discover(make_demo_dataset(tmp_path / "t", scenes=2, tiles_per_scene=2, size=32, mask_layout="two"))
    assert (region.mask_layout, onehot.mask_layout, two.mask_layout) == ("region", "onehot", "two")
    for task in ("binary", "multiclass"):
        for a, b, c in zip(region.samples, onehot.samples, two.samples):
            _, la = read_sample(a, DEFAULT_BANDS, task=task)
            _, lb = read_sample(b, DEFAULT_BANDS, task=task)
            _, lc = read_sample(c, DEFAULT_BANDS, task=task)
            np.testing.assert_array_equal(la, lb)  # same pixels ignored outside the region
            scored = la != IGNORE_INDEX
            np.testing.assert_array_equal(lc[scored], la[scored])  # no region in "two": only no-data ignored
    assert any((read_sample(s, DEFAULT_BANDS)[1] == IGNORE_INDEX).mean() > 0.2 for s in region.samples)


def test_a_onehot_dataset_forced_to_region_is_refused_at_discovery(tmp_path):
    root = make_demo_dataset(tmp_path, scenes=2, tiles_per_scene=2, size=32, mask_layout="onehot")
    with pytest.raises(InputError, match=r"slice_\d_mask_00\d\.npy: its \d+ glacier pixels lie outside the HKH "
                       r"region .*use --mask-layout onehot or auto$"):
        discover(root, mask_layout="region")


def test_multiclass_hkh_classes_and_labels(tmp_path):
    root = make_demo_dataset(tmp_path, scenes=1, tiles_per_scene=2, size=32, mask_layout="onehot", dtype=np.float64)
    source = discover(root, task="multiclass")
    assert source.class_names == ("background", "clean_ice", "debris") and source.class_values == (0, 85, 170)
    assert discover(root).class_names == ("background", "glacier") and discover(root).class_values == (0, 255)
    for sample in source.samples:
        mask = np.load(sample.label_path)
        image, label = read_sample(sample, source.default_bands)
        valid = mask.any(axis=-1) & np.isfinite(image).all(axis=-1)
        expected = np.where(mask[..., 1] == 1, 2, np.where(mask[..., 0] == 1, 1, 0))
        np.testing.assert_array_equal(label[valid], expected[valid])
        assert (label[~valid] == IGNORE_INDEX).all()


def test_multiclass_band_folders_and_a_value_outside_the_encoding(tmp_path):
    root = make_demo_band_folders(tmp_path / "d", tiles=4, size=32, task="multiclass")
    source = discover(root, task="multiclass")
    assert source.class_names == ("background", "glacier", "debris", "lake")
    assert source.class_values == (0, 85, 170, 255)
    seen = set()
    for sample in source.samples:
        raw = tifffile.imread(sample.label_path)
        _, label = read_sample(sample, source.default_bands)
        seen |= set(np.unique(raw).tolist())
        np.testing.assert_array_equal(np.array([0, 85, 170, 255])[np.minimum(label, 3)][label != IGNORE_INDEX],
                                      raw[label != IGNORE_INDEX])
    assert seen == {0, 85, 170, 255}
    bad = source.samples[1].label_path
    raw = tifffile.imread(bad)
    raw[0, :3] = 42
    tifffile.imwrite(bad, raw)
    with pytest.raises(InputError, match=r"Y_output_resized_00_01\.tif: multi-class label values must be "
                       r"0 background/85 glacier/170 debris/255 lake, found \[0, 42, ") as error:
        read_sample(source.samples[1], source.default_bands)
    assert "\n" not in str(error.value)
