"""Pixel rules on hand-built arrays: band selection, HKH mask compression, labels, no-data."""

import numpy as np
import pytest

from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.data.bands import (
    binary_label,
    compress_hkh_mask,
    ignore_nodata,
    nodata_mask,
    parse_bands,
    select_bands,
)
from keras_glacier.data.errors import InputError


def test_select_bands_picks_channels_in_the_given_order_as_float32():
    image = np.arange(2 * 3 * 15, dtype=np.float64).reshape(2, 3, 15)
    out = select_bands(image, (9, 1, 5))
    assert out.dtype == np.float32
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], image[..., 9])
    np.testing.assert_array_equal(out[..., 1], image[..., 1])
    np.testing.assert_array_equal(out[..., 2], image[..., 5])


def test_compress_hkh_mask_is_clean_or_debris_and_region_with_ignore_outside():
    # Every combination of (clean ice, debris, region) once.
    combos = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.uint8)
    mask = combos.reshape(2, 4, 3)
    label = compress_hkh_mask(mask)
    expected = np.array(
        [IGNORE_INDEX if c == 0 else int(a or b) for a, b, c in combos], dtype=np.uint8
    ).reshape(2, 4)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)


def test_compress_hkh_mask_rejects_other_values_and_shapes():
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[1, 1, 0] = 2
    with pytest.raises(InputError, match=r"m\.npy: mask values must be 0 or 1, found \[2\]"):
        compress_hkh_mask(mask, source="m.npy")
    with pytest.raises(InputError, match=r"m\.npy: expected an \(H, W, 3\) mask"):
        compress_hkh_mask(np.zeros((4, 4, 2), np.uint8), source="m.npy")


@pytest.mark.parametrize("positive", [1, 255])
def test_binary_label_accepts_0_1_and_0_255(positive):
    label = np.array([[0, positive], [positive, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(binary_label(label), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(binary_label(label[..., None]), [[0, 1], [1, 0]])


@pytest.mark.parametrize("values", [[0, 1, 255], [0, 2], [0, 128]])
def test_binary_label_rejects_anything_else_naming_the_file(values):
    label = np.array([values], dtype=np.uint8)
    with pytest.raises(InputError, match=r"^y\.tif: label values must be 0/1 or 0/255"):
        binary_label(label, source="y.tif")


def test_nodata_is_any_band_nonfinite_or_all_bands_zero():
    image = np.ones((1, 6, 3), np.float32)
    image[0, 1, 2] = np.nan
    image[0, 2, 0] = np.inf
    image[0, 3] = 0.0  # all bands zero
    image[0, 4, :2] = 0.0  # some bands zero: valid
    image[0, 5, 1] = -np.inf
    np.testing.assert_array_equal(nodata_mask(image)[0], [False, True, True, True, False, True])
    label = np.ones((1, 6), np.uint8)
    np.testing.assert_array_equal(ignore_nodata(label, image)[0], [1, 255, 255, 255, 1, 255])


def test_parse_bands():
    assert parse_bands("1,2,3,5,9") == (1, 2, 3, 5, 9)
    assert parse_bands(" 0, 4 ") == (0, 4)
    for bad in ("", "1,1", "a,b", "-1,2"):
        with pytest.raises(InputError, match="bands"):
            parse_bands(bad)
