"""Tile discovery and reading helpers of solution.py (framework-free part)."""

import os

import numpy as np
import pytest
import tifffile

import solution
from solution import (
    InputError,
    Tile,
    band_number,
    match_tiles,
    read_tile_bands,
    resolve_band_dirs,
    tile_id_from_name,
)

BAND_PREFIXES = ("B2_B2_masked", "B3_B3_masked", "B4_B4_masked", "B6_B6_masked", "B10_B10_masked")


def write_dataset(root, ids=("02_07", "03_01"), bands=5, size=(16, 20), seed=0, folder="Band{}"):
    """Band folders with differently prefixed file names per band, like the GlacierHack data."""
    rng = np.random.default_rng(seed)
    for b in range(1, bands + 1):
        band_dir = root / folder.format(b)
        band_dir.mkdir(parents=True)
        for tile_id in ids:
            data = rng.uniform(0, 1000, size).astype(np.float32)
            tifffile.imwrite(band_dir / f"{BAND_PREFIXES[(b - 1) % 5]}_{tile_id}.tif", data)
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("B2_B2_masked_02_07.tif", "02_07"),
        ("Y_output_resized_02_07.tif", "02_07"),
        ("img001.tif", "001"),
        ("img_001.TIFF", "001"),
        # Digits glued to letters: only the trailing run counts (the pattern is anchored at the end).
        ("scene2_img001.tif", "001"),
        ("L8tile12.tif", "12"),
        ("B1_12.tif", "12"),
        ("B10_B10_masked_12.tif", "12"),
        ("tile-03-04.tif", "03_04"),
        ("/some/dir/B3_B3_masked_11_02.tiff", "11_02"),
        ("glacier.tif", "glacier"),
    ],
)
def test_tile_id_from_name(name, expected):
    assert tile_id_from_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Band1", 1),
        ("band_3", 3),
        ("Band-03", 3),
        ("B3", 3),
        ("b07", 7),
        ("Band10", 10),
        ("/data/test/Band2/", 2),
        ("label", None),
        ("labels", None),
        ("mask", None),
        ("masks", None),
        ("Bandit", None),
    ],
)
def test_band_number(name, expected):
    assert band_number(name) == expected


def test_resolve_band_dirs_sorts_shuffled_dict_keys_numerically(tmp_path):
    names = [f"Band{n}" for n in range(1, 12)]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / "labels").mkdir()
    shuffled = ["Band10", "labels", "Band2", "Band11", "Band1", "Band9", "Band3", "Band5", "Band4",
                "Band8", "Band7", "Band6"]
    imagepath = {name: str(tmp_path / name) for name in shuffled}
    resolved = resolve_band_dirs(imagepath)
    assert [name for name, _ in resolved] == names
    assert [path for _, path in resolved] == [str(tmp_path / name) for name in names]
    assert resolve_band_dirs(tmp_path) == resolved
    assert resolve_band_dirs(str(tmp_path)) == resolved


def test_resolve_band_dirs_names_missing_band_folder(tmp_path):
    for name in ("band_1", "band_2", "band_4"):
        (tmp_path / name).mkdir()
    expected = r"band_3: missing band folder band_3 \(found band_1, band_2, band_4\)"
    with pytest.raises(InputError, match=expected):
        resolve_band_dirs(tmp_path)


def test_resolve_band_dirs_errors(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        resolve_band_dirs(tmp_path / "nope")
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match="no band folders"):
        resolve_band_dirs(tmp_path)
    with pytest.raises(InputError, match="Band1.*band folder 'Band1' not found"):
        resolve_band_dirs({"Band1": str(tmp_path / "Band1")})
    (tmp_path / "Band1").mkdir()
    (tmp_path / "B1").mkdir()
    with pytest.raises(InputError, match="'B1' and 'Band1' both give band 1"):
        resolve_band_dirs(tmp_path)
    (tmp_path / "B1").rmdir()
    (tmp_path / "Band0").mkdir()
    with pytest.raises(InputError, match="missing band folder"):
        resolve_band_dirs(tmp_path)


def test_match_tiles_by_id_across_differently_named_files(tmp_path):
    write_dataset(tmp_path, ids=("03_01", "02_07"))
    labels = tmp_path / "labels"
    labels.mkdir()
    for tile_id in ("02_07", "03_01", "09_09"):  # an extra label is fine
        tifffile.imwrite(labels / f"Y_output_resized_{tile_id}.tif", np.zeros((16, 20), np.uint8))
    (tmp_path / "Band1" / "notes.txt").write_text("not a tile")
    (tmp_path / "Band1" / "._B2_B2_masked_02_07.tif").write_bytes(b"macOS resource fork")
    tiles = match_tiles(resolve_band_dirs(tmp_path), label_dir=labels)
    assert [t.tile_id for t in tiles] == ["02_07", "03_01"]
    first = tiles[0]
    assert isinstance(first, Tile)
    assert first.name == "B2_B2_masked_02_07.tif"
    assert [os.path.basename(p) for p in first.band_paths] == [
        f"{prefix}_02_07.tif" for prefix in BAND_PREFIXES
    ]
    assert first.band_paths[2] == str(tmp_path / "Band3" / "B4_B4_masked_02_07.tif")
    assert first.label_path == str(labels / "Y_output_resized_02_07.tif")
    assert match_tiles(resolve_band_dirs(tmp_path))[1].label_path is None


def test_match_tiles_missing_tile_in_a_band(tmp_path):
    write_dataset(tmp_path)
    os.remove(tmp_path / "Band4" / "B6_B6_masked_03_01.tif")
    expected = r"Band4: no file for tile '03_01' \(band Band1 has 'B2_B2_masked_03_01.tif'\)"
    with pytest.raises(InputError, match=expected):
        match_tiles(resolve_band_dirs(tmp_path))


def test_match_tiles_extra_tile_in_a_band(tmp_path):
    write_dataset(tmp_path)
    tifffile.imwrite(tmp_path / "Band2" / "B3_B3_masked_05_05.tif", np.zeros((16, 20), np.float32))
    expected = r"Band2.B3_B3_masked_05_05.tif: tile '05_05' has no matching file in .*Band1"
    with pytest.raises(InputError, match=expected):
        match_tiles(resolve_band_dirs(tmp_path))


def test_match_tiles_duplicate_ids_and_empty_folder(tmp_path):
    write_dataset(tmp_path)
    tifffile.imwrite(tmp_path / "Band3" / "other_02_07.tiff", np.zeros((16, 20), np.float32))
    expected = r"Band3: files 'B4_B4_masked_02_07.tif' and 'other_02_07.tiff' have the same tile id '02_07'"
    with pytest.raises(InputError, match=expected):
        match_tiles(resolve_band_dirs(tmp_path))
    empty = tmp_path / "empty"
    (empty / "Band1").mkdir(parents=True)
    with pytest.raises(InputError, match=r"Band1: no .tif/.tiff files"):
        match_tiles(resolve_band_dirs(empty))


def test_match_tiles_missing_label(tmp_path):
    write_dataset(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "Y_output_resized_02_07.tif", np.zeros((16, 20), np.uint8))
    with pytest.raises(InputError, match=r"labels: no label file for tile '03_01'"):
        match_tiles(resolve_band_dirs(tmp_path), label_dir=labels)


def test_read_tile_bands_stacks_float32_in_band_order(tmp_path):
    write_dataset(tmp_path, ids=("02_07",), bands=3)
    tile = match_tiles(resolve_band_dirs(tmp_path))[0]
    # a (1, H, W) file and an integer band are accepted
    band2 = np.arange(16 * 20, dtype=np.uint16).reshape(1, 16, 20)
    tifffile.imwrite(tile.band_paths[1], band2)
    image = read_tile_bands(tile)
    assert image.shape == (16, 20, 3)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image[..., 0], tifffile.imread(tile.band_paths[0]))
    np.testing.assert_array_equal(image[..., 1], band2[0])
    np.testing.assert_array_equal(image[..., 2], tifffile.imread(tile.band_paths[2]))


def test_read_tile_bands_errors_name_the_file(tmp_path):
    write_dataset(tmp_path, ids=("02_07",), bands=3)
    tile = match_tiles(resolve_band_dirs(tmp_path))[0]
    good = tifffile.imread(tile.band_paths[2])

    tifffile.imwrite(tile.band_paths[2], np.zeros((16, 21), np.float32))
    expected = r"B4_B4_masked_02_07.tif: size \(16, 21\) differs from .*B2_B2_masked_02_07.tif"
    expected += r" with size \(16, 20"
    with pytest.raises(InputError, match=expected):
        read_tile_bands(tile)

    tifffile.imwrite(tile.band_paths[2], np.zeros((16, 20, 3), np.float32), photometric="minisblack")
    with pytest.raises(InputError, match=r"B4_B4_masked_02_07.tif: expected a single band .* \(16, 20, 3\)"):
        read_tile_bands(tile)

    with open(tile.band_paths[2], "wb") as f:
        f.write(b"II*\x00garbage" * 3)
    with pytest.raises(InputError, match=r"B4_B4_masked_02_07.tif: cannot read TIFF") as info:
        read_tile_bands(tile)
    assert "\n" not in str(info.value)

    open(tile.band_paths[2], "wb").close()
    with pytest.raises(InputError, match=r"B4_B4_masked_02_07.tif: cannot read TIFF"):
        read_tile_bands(tile)
    tifffile.imwrite(tile.band_paths[2], good)
    assert read_tile_bands(tile).shape == (16, 20, 3)


def test_input_error_is_one_line_value_error():
    err = InputError("a.tif: line one\nline two")
    assert isinstance(err, ValueError)
    assert str(err) == "a.tif: line one line two"


def test_nodata_mask():
    image = np.ones((2, 3, 2), np.float32)
    image[0, 0] = 0  # all bands zero
    image[0, 1, 0] = 0  # one band zero: valid
    image[1, 2, 1] = np.nan
    image[1, 0, 0] = np.inf
    expected = np.array([[True, False, False], [True, False, True]])
    np.testing.assert_array_equal(solution.nodata_mask(image), expected)
