"""Bands by name (table, presets, parser, resolution, mismatch warning) and the pixel rules of bands.py."""

import numpy as np
import pytest

from keras_glacier.constants import DEFAULT_BANDS, IGNORE_INDEX
from keras_glacier.data.bands import (
    HKH_CHANNELS,
    band_names_mismatch,
    binary_label,
    compress_hkh_mask,
    describe_bands,
    ignore_nodata,
    nodata_mask,
    parse_bands,
    resolve_band_spec,
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
    with pytest.raises(InputError, match=r"m\.npy: a 2-channel mask, but the layout is region"):
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


def test_parse_bands_takes_presets_indices_and_names_in_any_case():
    assert parse_bands("1,2,3,5,9") == (1, 2, 3, 5, 9)
    assert parse_bands(" 0, 4 ") == (0, 4)
    assert parse_bands("b1,B2,b6_vcid1") == ("B1", "B2", "B6_VCID1")  # HKH names in the table's spelling
    assert parse_bands("B10,Band1") == ("B10", "Band1")  # band-folder names are checked against the data
    assert parse_bands("Competition") == "competition" and parse_bands("seed") == "seed"
    assert parse_bands("all") == "all"
    for bad in ("", "1,1", "b1,B1", "-1,2", "1;2", "a b"):
        with pytest.raises(InputError, match="^--bands"):
            parse_bands(bad)


def test_names_indices_and_presets_resolve_to_the_same_hkh_channels():
    competition = resolve_band_spec("competition", HKH_CHANNELS)
    assert competition.indices == DEFAULT_BANDS == (0, 1, 2, 4, 5)
    assert competition.names == ("B1", "B2", "B3", "B5", "B6_VCID1")
    assert resolve_band_spec(parse_bands("b1,b2,b3,b5,b6_vcid1"), HKH_CHANNELS) == competition
    assert resolve_band_spec("0,1,2,4,5", HKH_CHANNELS) == competition
    seed = resolve_band_spec("seed", HKH_CHANNELS)
    assert seed.indices == (1, 2, 3, 5, 9) and seed.names == ("B2", "B3", "B4", "B6_VCID1", "BQA")
    assert resolve_band_spec(("B2", 2, "b4", 5, "bqa"), HKH_CHANNELS) == seed  # names and indices mixed
    assert describe_bands(seed.names) == "B2 (green), B3 (red), B4 (NIR), B6_VCID1 (thermal), BQA (quality flags)"
    assert resolve_band_spec("all", HKH_CHANNELS).indices == tuple(range(15))


def test_competition_preset_finds_the_same_light_in_glacierhack_band_folders():
    """Landsat 8 numbers: B2 is blue there, so the preset goes by what a band measures, not its name."""
    selection = resolve_band_spec("competition", ("B10", "B6", "B4", "B3", "B2"))
    assert selection.names == ("B2", "B3", "B4", "B6", "B10") and selection.indices == (4, 3, 2, 1, 0)
    with pytest.raises(InputError, match=r"^d: preset competition needs blue, green, red, SWIR-1, thermal"):
        resolve_band_spec("competition", ("Band1", "Band2", "Band3", "Band4", "Band5"), where="d")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("B1,NIR", r"^d: unknown band 'NIR': this dataset's bands are B1, B2, B3, B4, B5, B6_VCID1, .*slope"),
        ("0,15", r"^d: bands \[0, 15\] go beyond the 15 channels"),
        ("1,b2", r"^d: bands \[1, 1\] \(1, B2\): a band is listed twice"),
    ],
)
def test_bad_band_specs_are_one_line_errors_listing_the_valid_bands(spec, message):
    with pytest.raises(InputError, match=message) as error:
        resolve_band_spec(spec, HKH_CHANNELS, where="d")
    assert "\n" not in str(error.value)


def test_band_names_mismatch_compares_what_bands_measure():
    hkh = ("B1", "B2", "B3", "B5", "B6_VCID1")
    assert band_names_mismatch(hkh, hkh) is None
    assert band_names_mismatch(hkh, ("B2", "B3", "B4", "B6", "B10")) is None  # same light, Landsat 8 numbers
    assert band_names_mismatch(hkh, ("Band1", "Band2", "Band3", "Band4", "Band5")) is None  # names unknown
    seed = ("B2", "B3", "B4", "B6_VCID1", "BQA")
    warning = band_names_mismatch(seed, ("B2", "B3", "B4", "B6", "B10"))
    assert warning.startswith("the model was trained on bands B2 (green), B3 (red), B4 (NIR)")
    assert "B2 (blue)" in warning and "\n" not in warning
    assert band_names_mismatch(hkh, ("B1", "B2", "B3")).endswith("but the data has 3 (B1, B2, B3)")
    assert band_names_mismatch(("x", "y"), ("x", "z")) is not None
