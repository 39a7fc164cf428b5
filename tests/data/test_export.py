"""Band-folder export: what solution.py and discover read back is the source's tiles, bands and labels."""

import dataclasses

import numpy as np
import pytest

from keras_glacier.constants import DEFAULT_BANDS, IGNORE_INDEX
from keras_glacier.data import InputError, discover, read_sample
from keras_glacier.data.bands import nodata_mask
from keras_glacier.data.export import export_band_folders
from keras_glacier.data.sources import TIFF


def assert_same_tile(original, copy, bands):
    image, label = read_sample(original, bands)
    copy_image, copy_label = read_sample(copy, range(len(bands)))
    np.testing.assert_array_equal(copy_image, image)  # NaN no-data stripes included
    scored = label != IGNORE_INDEX
    np.testing.assert_array_equal(copy_label[scored], label[scored])
    nodata = nodata_mask(image)
    assert np.all(copy_label[nodata] == IGNORE_INDEX)
    # Ignored for another reason (outside the HKH region): background in a band-folder label.
    assert np.all(copy_label[~scored & ~nodata] == 0)


def test_npy_tiles_round_trip_through_band_folders(demo_npy_source, tmp_path):
    samples = [s for s in demo_npy_source.samples if s.scene_id in ("slice_1", "slice_2")]
    assert any(np.isnan(read_sample(s, DEFAULT_BANDS)[0]).any() for s in samples)  # stripes are exported too

    exported = export_band_folders(samples, DEFAULT_BANDS, tmp_path / "bands")

    copy = discover(tmp_path / "bands")
    # tile_<id>.tif carries no band name: the bands are named by their folders.
    assert copy.kind == TIFF and copy.band_names == ("Band1", "Band2", "Band3", "Band4", "Band5")
    assert copy.has_labels and sorted(exported) == sorted(s.sample_id for s in copy.samples)
    assert exported["2_003"].sample_id == "slice_2_img_003"
    by_id = {s.sample_id: s for s in copy.samples}
    for tile_id, original in exported.items():
        assert by_id[tile_id].name == f"tile_{tile_id}.tif"
        assert by_id[tile_id].scene_id == original.scene_id.removeprefix("slice_")
        assert_same_tile(original, by_id[tile_id], DEFAULT_BANDS)


def test_band_order_follows_the_selection(demo_npy_source, tmp_path):
    sample = demo_npy_source.samples[5]
    export_band_folders([sample], (9, 1), tmp_path)
    copy = discover(tmp_path)
    assert copy.band_names == ("Band1", "Band2")
    image, _ = read_sample(sample, (9, 1))
    np.testing.assert_array_equal(read_sample(copy.samples[0], (0, 1))[0], image)


def test_band_folder_tiles_keep_their_ids(demo_tiff_source, tmp_path):
    exported = export_band_folders(demo_tiff_source.samples, (0, 1, 2, 3, 4), tmp_path)
    assert sorted(exported) == sorted(s.sample_id for s in demo_tiff_source.samples)
    copy = {s.sample_id: s for s in discover(tmp_path).samples}
    for tile_id, original in exported.items():
        assert_same_tile(original, copy[tile_id], (0, 1, 2, 3, 4))


def test_unlabelled_tiles_are_exported_without_a_label_folder(demo_tiff_source, tmp_path):
    samples = [dataclasses.replace(s, label_path=None) for s in demo_tiff_source.samples[:2]]
    export_band_folders(samples, (0, 1, 2, 3, 4), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"Band{k}" for k in range(1, 6)]
    assert not discover(tmp_path).has_labels


def test_a_second_export_needs_overwrite_and_leaves_no_stale_tile(demo_npy_source, tmp_path):
    first, second = demo_npy_source.samples[:4], demo_npy_source.samples[4:6]
    export_band_folders(first, DEFAULT_BANDS, tmp_path)
    with pytest.raises(InputError, match="not empty"):
        export_band_folders(second, DEFAULT_BANDS, tmp_path)
    assert len(discover(tmp_path).samples) == 4

    export_band_folders(second, DEFAULT_BANDS, tmp_path, overwrite=True)
    assert sorted(s.sample_id for s in discover(tmp_path).samples) == ["1_000", "1_001"]


def test_overwrite_never_deletes_files_it_did_not_write(demo_npy_source, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes.txt"):
        export_band_folders(demo_npy_source.samples[:1], DEFAULT_BANDS, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_tiles_whose_ids_collide_are_rejected_before_writing(demo_npy_source, tmp_path):
    a, b = demo_npy_source.samples[:2]
    clash = [dataclasses.replace(a, sample_id="north_7"), dataclasses.replace(b, sample_id="south_7")]
    with pytest.raises(InputError, match="'7'"):
        export_band_folders(clash, DEFAULT_BANDS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_multiclass_labels_are_exported_as_phase2_values(demo_npy_root, tmp_path):
    source = discover(demo_npy_root, task="multiclass")
    samples = source.samples[:3]
    export_band_folders(samples, DEFAULT_BANDS, tmp_path)
    copy = discover(tmp_path, task="multiclass")
    for original, exported in zip(samples, copy.samples):
        _, label = read_sample(original, DEFAULT_BANDS)
        _, copy_label = read_sample(exported, range(5))
        scored = label != IGNORE_INDEX
        assert set(np.unique(label[scored])) <= {0, 1, 2}
        np.testing.assert_array_equal(copy_label[scored], label[scored])  # clean ice 85 -> glacier, debris 170
    assert any(2 in read_sample(s, DEFAULT_BANDS)[1] for s in samples)
