"""Mask layouts pixel by pixel (label and ignore, both tasks), layout detection, band-folder label values."""

import numpy as np
import pytest

from keras_glacier.constants import IGNORE_INDEX as X
from keras_glacier.data.errors import InputError
from keras_glacier.data.layouts import band_folder_label, class_names, mask_layouts, mask_to_label, resolve_layout

# Every combination of three 0/1 channels, one pixel each: (clean ice, debris, third channel).
COMBOS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], np.uint8).reshape(1, 8, 3)
#                  (0,0,0) (0,0,1) (0,1,0) (0,1,1) (1,0,0) (1,0,1) (1,1,0) (1,1,1)
REGION_BINARY = [X, 0, X, 1, X, 1, X, 1]
REGION_MULTI = [X, 0, X, 2, X, 1, X, 2]  # both channels set: debris
# One-hot: at most one channel per pixel; all zero = outside the labelled area.
ONEHOT = np.array([[[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]], np.uint8)
TWO = np.array([[[0, 0], [1, 0], [0, 1], [1, 1]]], np.uint8)


def test_region_layout_pixel_by_pixel():
    np.testing.assert_array_equal(mask_to_label(COMBOS, "region", "binary")[0], REGION_BINARY)
    np.testing.assert_array_equal(mask_to_label(COMBOS, "region", "multiclass")[0], REGION_MULTI)


def test_onehot_layout_pixel_by_pixel():
    np.testing.assert_array_equal(mask_to_label(ONEHOT, "onehot", "binary")[0], [X, 0, 1, 1])
    np.testing.assert_array_equal(mask_to_label(ONEHOT, "onehot", "multiclass")[0], [X, 0, 1, 2])


def test_two_channel_layout_pixel_by_pixel():
    np.testing.assert_array_equal(mask_to_label(TWO, "two", "binary")[0], [0, 1, 1, 1])
    np.testing.assert_array_equal(mask_to_label(TWO, "two", "multiclass")[0], [0, 1, 2, 2])
    assert mask_to_label(TWO.astype(np.float64), "auto").dtype == np.uint8  # float and bool masks alike


def test_classes_per_task_and_dataset_kind():
    assert class_names("npy", "binary") == class_names("tiff", "binary") == ("background", "glacier")
    assert class_names("npy", "multiclass") == ("background", "clean_ice", "debris")
    assert class_names("tiff", "multiclass") == ("background", "glacier", "debris", "lake")
    with pytest.raises(InputError, match="task 'phase2': expected one of binary, multiclass"):
        class_names("npy", "phase2")


def test_which_layouts_a_mask_can_be_read_in():
    assert mask_layouts(COMBOS[:, [1, 3, 5]]) == {"region"}  # glacier inside the region: two channels set
    assert mask_layouts(ONEHOT) == {"region", "onehot"}  # glacier outside channel 2: a region tile may do that
    assert mask_layouts(COMBOS[:, [0, 1]]) == {"region", "onehot"}  # no glacier: both read it the same
    assert mask_layouts(TWO) == {"two"}
    np.testing.assert_array_equal(
        mask_to_label(COMBOS[:, [0, 1]], "region"), mask_to_label(COMBOS[:, [0, 1]], "onehot")
    )
    # A hand-made sample without a dataset decides from its own mask.
    np.testing.assert_array_equal(mask_to_label(ONEHOT, "auto"), mask_to_label(ONEHOT, "onehot"))
    np.testing.assert_array_equal(mask_to_label(COMBOS, "auto"), mask_to_label(COMBOS, "region"))


EMPTY = COMBOS[:, [0, 1]]  # no glacier pixel: region or onehot
REGION = COMBOS[:, [1, 3, 5]]  # glacier inside the region
EDGE = np.array([[[1, 0, 0], [0, 0, 1]]], np.uint8)  # a region tile whose glacier lies outside its region
MASKS = {"a": EMPTY, "b": EMPTY, "c": ONEHOT, "d": ONEHOT, "e": TWO, "r": REGION, "x": EDGE}


def test_auto_finds_the_layout_of_a_dataset_from_a_sample():
    load = MASKS.__getitem__
    assert resolve_layout(["a", "b", "c", "d"], "auto", load) == "onehot"
    assert resolve_layout(["a", "x", "r"], "auto", load) == "region"  # one mask with two channels set decides
    assert resolve_layout(["a", "b"], "auto", load) == "region"  # undecidable, and the labels are the same
    assert resolve_layout(["e"], "auto", load) == "two"
    # Nothing to decide by in the sample: the other files are read until one decides.
    assert resolve_layout(["a", "b", "c"], "auto", load, sample=1) == "onehot"
    assert resolve_layout(["a", "b", "r"], "auto", load, sample=1) == "region"


def test_a_onehot_dataset_forced_to_region_is_refused():
    """Read as region, every glacier pixel of a one-hot mask would be ignored: training on nothing."""
    load = MASKS.__getitem__
    with pytest.raises(InputError, match=r"^c: its 2 glacier pixels lie outside the HKH region \(channel 2 == 0\), "
                       r"and no mask looked at has glacier inside it: these are one-hot .*use --mask-layout onehot"):
        resolve_layout(["a", "c", "d"], "region", load)
    assert resolve_layout(["a", "c", "r"], "region", load) == "region"  # an edge tile among region masks
    assert resolve_layout(["a", "c"], "onehot", load) == "onehot"


def test_masks_disagreeing_with_the_dataset_are_refused_naming_the_file():
    load = MASKS.__getitem__
    with pytest.raises(InputError, match=r"^e: a 2-channel mask, but c has 3: the masks of one dataset must share"):
        resolve_layout(["c", "e"], "auto", load)
    with pytest.raises(InputError, match=r"^r: 2 pixels have several channels set, which a one-hot mask never has"):
        resolve_layout(["c", "r"], "onehot", load)
    with pytest.raises(InputError, match=r"^m\.npy: 2 pixels have several channels set"):  # checked as read
        mask_to_label(REGION, "onehot", source="m.npy")
    with pytest.raises(InputError, match=r"^m\.npy: a 2-channel mask, but the layout is region"):
        mask_to_label(TWO, "region", source="m.npy")
    with pytest.raises(InputError, match=r"mask layout 'rgb': expected one of auto, region, onehot, two"):
        resolve_layout(["a"], "rgb", load)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.full((2, 2, 3), 2, np.uint8), r"^m\.npy: mask values must be 0 or 1, found \[2\]$"),
        (np.zeros((2, 2, 4), np.uint8), r"^m\.npy: a mask of shape \(2, 2, 4\) fits no mask layout"),
        (np.zeros((2, 2), np.uint8), r"^m\.npy: a mask of shape \(2, 2\) fits no mask layout"),
    ],
)
def test_masks_fitting_no_layout_are_refused_naming_the_file(mask, message):
    with pytest.raises(InputError, match=message) as error:
        mask_to_label(mask, "auto", source="m.npy")
    assert "\n" not in str(error.value)


def test_band_folder_labels_binary_and_multiclass():
    phase2 = np.array([[0, 85, 170, 255]], np.uint8)
    np.testing.assert_array_equal(band_folder_label(phase2, "multiclass"), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(band_folder_label(phase2[..., None], "multiclass"), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(band_folder_label(np.array([[0, 255]], np.uint8), "binary"), [[0, 1]])
    with pytest.raises(InputError, match=r"^y\.tif: label values must be 0/1 or 0/255, found \[0, 85, 170, 255\]; "
                       r"phase-2 class values: use --task multiclass$"):
        band_folder_label(phase2, "binary", source="y.tif")


def test_a_value_outside_the_phase2_encoding_is_refused_naming_the_file_and_values():
    label = np.array([[0, 42, 85]], np.uint8)
    with pytest.raises(InputError, match=r"^y\.tif: multi-class label values must be 0 background/85 glacier/"
                       r"170 debris/255 lake, found \[0, 42, 85\]$"):
        band_folder_label(label, "multiclass", source="y.tif")
    with pytest.raises(InputError, match=r"found \[0, 1\]; a binary label: use --task binary$"):
        band_folder_label(np.array([[0, 1]], np.uint8), "multiclass", source="y.tif")
