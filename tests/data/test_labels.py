"""The label census of a split: one line with the layout and the fractions, and the no-glacier refusal."""

import numpy as np
import pytest
import tifffile

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data import discover, label_summary, read_sample
from keras_glacier.data.demo import make_demo_band_folders, make_demo_dataset
from keras_glacier.data.errors import InputError


def test_summary_counts_every_label_pixel_of_the_split(demo_npy_source):
    samples, bands = demo_npy_source.samples, demo_npy_source.default_bands
    summary = label_summary(samples, bands, demo_npy_source.class_names, demo_npy_source.mask_layout)
    labels = np.concatenate([read_sample(s, bands)[1].ravel() for s in samples])
    assert summary.counts == ((labels == 0).sum(), (labels == 1).sum())
    assert summary.ignored == (labels == IGNORE_INDEX).sum() and summary.tiles_read == summary.tiles == 12
    shares = summary.fractions()
    line = summary.line()
    assert line == (
        f"training split labels (mask layout region (3 channels [clean ice, debris, HKH region]), 12 of 12 tiles): "
        f"background {100 * shares['background']:.1f}%, glacier {100 * shares['glacier']:.1f}%, "
        f"ignored {100 * shares['ignored']:.1f}%"
    )
    summary.require_glacier()


def test_multiclass_summary_has_one_share_per_class(tmp_path):
    source = discover(make_demo_band_folders(tmp_path, tiles=4, size=32, task="multiclass"), task="multiclass")
    summary = label_summary(source.samples, source.default_bands, source.class_names, max_tiles=2)
    assert list(summary.fractions()) == ["background", "glacier", "debris", "lake", "ignored"]
    assert summary.tiles_read == 2 and summary.tiles == 4 and "2 of 4 tiles" in summary.line()


def test_a_split_without_glacier_is_refused_after_reading_every_tile(tmp_path):
    root = make_demo_dataset(tmp_path, scenes=1, tiles_per_scene=3, size=32)
    for path in sorted(root.glob("slice_*_mask_*.npy")):
        mask = np.load(path)
        mask[..., :2] = 0
        np.save(path, mask)
    source = discover(root)
    summary = label_summary(source.samples, source.default_bands, source.class_names, source.mask_layout, max_tiles=1)
    assert summary.tiles_read == 3  # the sample had no glacier: the rest was read before refusing
    with pytest.raises(InputError, match=r"^no glacier pixel in the training split: training split labels "
                       r"\(mask layout region .*glacier 0\.0%.*check --mask-layout and the mask files$"):
        summary.require_glacier()


def test_binary_labels_read_as_multiclass_are_refused_as_all_lake(tmp_path):
    root = make_demo_band_folders(tmp_path, tiles=2, size=32)  # 0/255 binary labels
    source = discover(root, task="multiclass")
    assert set(np.unique(tifffile.imread(source.samples[0].label_path))) <= {0, 255}
    summary = label_summary(source.samples, source.default_bands, source.class_names)
    with pytest.raises(InputError, match=r"labels 0/255 only are binary labels: use --task binary$"):
        summary.require_glacier()
