"""Whole-scene prediction (keras_glacier.scenes) on small synthetic GeoTIFFs written with rasterio.

Most tests drive ``predict_scene`` with a per-pixel fake forward (probability = the first model
band), so the expected mask is known exactly and the tests stay fast; one test runs the real Keras
network end to end through ``python -m keras_glacier.predict MODEL --scene``.
"""

import keras_glacier  # noqa: F401  (selects the Keras backend first)

# isort: split

import json
import sqlite3
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.errors
import shapely
from rasterio.transform import Affine

import solution
from keras_glacier import predict
from keras_glacier.data.errors import InputError
from keras_glacier.scenes import predict_scene
from keras_glacier.scenes.bands import (
    COMPETITION_BANDS,
    L7,
    L8,
    SceneBand,
    band_key,
    match_bands,
    parse_band_map,
    scene_band_key,
    sensor_numbering,
)
from keras_glacier.scenes.model_info import ModelInfo, band_names, is_placeholder, nodata_value
from keras_glacier.scenes.predict import class_mask
from keras_glacier.scenes.tiling import plan_strips, predict_strips

UTM = "EPSG:32645"
TRANSFORM = Affine(30, 0, 478000, 0, -30, 3108140)
PIXEL_KM2 = 30 * 30 / 1e6
L8_FILES = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10", "QA_PIXEL", "ST_QA")
L7_FILES = ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7")
# Which synthetic band each Landsat band file holds (scene_bands rows): the model's five get 0..4.
L8_ROW = {"SR_B2": 0, "SR_B3": 1, "SR_B4": 2, "SR_B6": 3, "ST_B10": 4}
L7_ROW = {"B1": 0, "B2": 1, "B3": 2, "B5": 3, "B6_VCID_1": 4}


def binary_info(names=COMPETITION_BANDS, threshold=0.5):
    return ModelInfo(tuple(names), "test", "binary", ("background", "glacier"), (0, 255), threshold,
                     (0.0,) * len(names), (1.0,) * len(names))


def first_band(batch):
    """A per-pixel fake network: the glacier probability is the first model band's value."""
    return np.asarray(batch)[..., 0]


def scene_bands(height=70, width=90, seed=0):
    """(5, H, W) float32 in (0.05, 0.95), a 6-row no-data collar of zeros, one glacier speck (1 px)."""
    rng = np.random.default_rng(seed)
    bands = rng.uniform(0.05, 0.95, (5, height, width)).astype(np.float32)
    bands[0] = np.where(np.add.outer(np.arange(height), np.arange(width)) % 37 < 15, 0.8, 0.2)  # glacier stripes
    y, x = height // 2 + 3, width // 2
    bands[0, y - 5 : y + 5, x - 5 : x + 5] = 0.2
    bands[0, y, x] = 0.8  # an isolated one-pixel glacier speck
    bands[:, :6] = 0.0
    return bands


def write_tif(path, bands, crs=UTM, transform=TRANSFORM, nodata=0.0, descriptions=None, dtype="float32"):
    bands = np.asarray(bands)
    bands = bands[None] if bands.ndim == 2 else bands
    profile = dict(driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands), dtype=dtype,
                   crs=crs, transform=transform, nodata=nodata)
    with warnings.catch_warnings():  # a CRS-less test file has the identity transform on purpose
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(bands.astype(dtype))
            for index, text in enumerate(descriptions or [], start=1):
                dataset.set_band_description(index, text)
    return path


def write_folder(folder, bands, names, rows, prefix):
    folder.mkdir()
    for name in names:
        data = bands[rows[name]] if name in rows else np.full_like(bands[0], 0.5)
        write_tif(folder / f"{prefix}_{name}.TIF", data)
    return folder


def expected_mask(bands, threshold=0.5):
    nodata = (bands == 0).all(axis=0)
    return np.where(nodata, 1, np.where(bands[0] > threshold, 255, 0)).astype(np.uint8)


def read_mask(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1), dataset.profile


def geojson_features(path):
    return json.loads(path.read_text())["features"]


def gpkg_rows(path):
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT geom, class, value, area_km2, pixels FROM outlines").fetchall()
        srs = db.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'outlines'").fetchone()[0]
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
    return rows, srs, app_id


def gdal_library():
    """rasterio's own GDAL (the wheel bundles it under rasterio.libs), for reading the outlines as QGIS would."""
    import ctypes
    import ctypes.util
    from pathlib import Path

    bundled = sorted((Path(rasterio.__file__).parent.parent / "rasterio.libs").glob("libgdal*.so*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library("gdal")
    if name is None:
        pytest.skip("no GDAL shared library found to cross-check the outline files")
    lib = ctypes.CDLL(name)
    lib.GDALAllRegister()
    lib.GDALOpenEx.restype = ctypes.c_void_p
    lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALDatasetGetLayer.restype = ctypes.c_void_p
    lib.GDALDatasetGetLayer.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.OGR_L_GetFeatureCount.restype = ctypes.c_longlong
    lib.OGR_L_GetFeatureCount.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.OGR_L_GetSpatialRef.restype = ctypes.c_void_p
    lib.OGR_L_GetSpatialRef.argtypes = [ctypes.c_void_p]
    lib.OSRGetAuthorityCode.restype = ctypes.c_char_p
    lib.OSRGetAuthorityCode.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    return lib


def ogr_features_and_epsg(path):
    """(feature count, EPSG code) of the first layer, as GDAL's vector drivers read the file."""
    lib = gdal_library()
    dataset = lib.GDALOpenEx(str(path).encode(), 0x04, None, None, None)  # GDAL_OF_VECTOR
    assert dataset, f"GDAL cannot open {path}"
    try:
        layer = lib.GDALDatasetGetLayer(dataset, 0)
        srs = lib.OGR_L_GetSpatialRef(layer)
        return lib.OGR_L_GetFeatureCount(layer, 1), (int(lib.OSRGetAuthorityCode(srs, None)) if srs else None)
    finally:
        lib.GDALClose(dataset)


# ----------------------------------------------------------------------------------------------
# Band names and matching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key"), [
    ("LC08_L2SP_140041_20201030_20201106_02_T1_SR_B2", "B2"),
    ("LC09_L2SP_140041_20221030_20221106_02_T1_ST_B10", "B10"),
    ("LE07_L1TP_140041_20001030_20200917_02_T1_B6_VCID_1", "B6VCID1"),
    ("LE07_L2SP_140041_20001030_20200917_02_T1_ST_B6", "B6"),
    ("LC08_L2SP_140041_20201030_20201106_02_T1_QA_PIXEL", None),
    ("LC08_L2SP_140041_20201030_20201106_02_T1_SR_QA_AEROSOL", None),
    ("B2_B2_masked_02_07", "B2"),
    ("Band 3", "B3"),
    ("blue", "BLUE"),
    ("scene_band4", "B4"),
    ("L7_b1_00_00", None),
])
def test_scene_band_key(name, key):
    assert scene_band_key(name) == key


def test_band_key_and_sensor():
    assert band_key("B6_VCID1") == band_key("b6_vcid_1") == "B6VCID1"
    assert band_key("band2") == "B2"
    assert sensor_numbering("LE07_x.TIF") == sensor_numbering("LT05_x.TIF") == L7
    assert sensor_numbering("LC08_x.TIF") == sensor_numbering("LC09_x.TIF") == L8
    assert sensor_numbering("B2.tif") is None


def folder_bands(names, prefix=""):
    return [SceneBand(p := __import__("pathlib").Path(f"/s/{prefix}{n}.TIF"), 1, scene_band_key(p.stem), p.name,
                      sensor_numbering(p.name)) for n in names]


def matched(result):
    return [source.label for source in result.sources]


def test_match_landsat8_and_landsat7_products_to_the_competition_bands(tmp_path):
    l8 = folder_bands(L8_FILES, "LC08_L2SP_140041_20201030_20201106_02_T1_")
    result = match_bands(tmp_path, COMPETITION_BANDS, l8)
    assert [label.rsplit("_T1_", 1)[1] for label in matched(result)] == ["SR_B2.TIF", "SR_B3.TIF", "SR_B4.TIF",
                                                                        "SR_B6.TIF", "ST_B10.TIF"]
    l7 = folder_bands(L7_FILES, "LE07_L1TP_140041_20001030_20200917_02_T1_")
    result = match_bands(tmp_path, COMPETITION_BANDS, l7)
    assert [label.rsplit("_T1_", 1)[1] for label in matched(result)] == ["B1.TIF", "B2.TIF", "B3.TIF", "B5.TIF",
                                                                        "B6_VCID_1.TIF"]
    # A model named in the competition's Landsat 8/9 names takes the same Landsat 7 files.
    result = match_bands(tmp_path, ("B2", "B3", "B4", "B6", "B10"), l7)
    assert [label.rsplit("_T1_", 1)[1] for label in matched(result)][3:] == ["B5.TIF", "B6_VCID_1.TIF"]
    # A model's plain B6 is the competition's SWIR-1 (HKH names its thermal bands B6_VCID1/2).
    result = match_bands(tmp_path, ("B2", "B6"), l7)
    assert [label.rsplit("_T1_", 1)[1] for label in matched(result)] == ["B1.TIF", "B5.TIF"]


def test_match_plain_names_uses_the_band_only_one_numbering_has(tmp_path):
    competition = folder_bands(["B2", "B3", "B4", "B6", "B10"])  # B10: Landsat 8/9 numbering
    assert matched(match_bands(tmp_path, COMPETITION_BANDS, competition)) == ["B2.TIF", "B3.TIF", "B4.TIF",
                                                                              "B6.TIF", "B10.TIF"]


def test_match_refuses_an_ambiguous_numbering(tmp_path):
    plain = folder_bands(["B1", "B2", "B3", "B4", "B5", "B6", "B7"])
    # Only Landsat 7 numbering has a thermal band among B1..B7, so the competition's five are settled ...
    assert matched(match_bands(tmp_path, COMPETITION_BANDS, plain)) == ["B1.TIF", "B2.TIF", "B3.TIF", "B5.TIF",
                                                                        "B6.TIF"]
    # ... but blue, green, red, swir1 fit both numberings, with different files: refused, not guessed.
    rgb_swir = ("B1", "B2", "B3", "B5")
    with pytest.raises(InputError, match="cannot tell whether the band numbers are Landsat 7"):
        match_bands(tmp_path, rgb_swir, plain)
    result = match_bands(tmp_path, rgb_swir, plain, parse_band_map("B1=B2,B2=B3,B3=B4,B5=B6"))
    assert matched(result) == ["B2.TIF", "B3.TIF", "B4.TIF", "B6.TIF"]


def test_match_error_lists_what_is_needed_and_found(tmp_path):
    bands = folder_bands(["SR_B2", "SR_B3", "SR_B4", "QA_PIXEL"], "LC08_L2SP_1_2_3_02_T1_")
    with pytest.raises(InputError) as error:
        match_bands(tmp_path, COMPETITION_BANDS, bands)
    message = str(error.value)
    assert "\n" not in message
    assert "nothing for B5 (swir1), B6_VCID1 (thermal)" in message
    assert "LC08_L2SP_1_2_3_02_T1_SR_B2.TIF (blue)" in message
    assert "and 1 other file" in message and "--band-map" in message


def test_band_map_overrides_and_checks_names(tmp_path):
    dem = write_tif(tmp_path / "srtm.tif", np.ones((4, 4)))
    bands = folder_bands(["SR_B2", "SR_B3", "SR_B4", "SR_B6", "ST_B10"], "LC08_L2SP_1_2_3_02_T1_")
    result = match_bands(tmp_path, ("B1", "B2", "elevation"), bands, parse_band_map([f"elevation={dem}"]))
    assert result.sources[2].path == dem
    with pytest.raises(InputError, match="the model has no band 'B9'"):
        match_bands(tmp_path, COMPETITION_BANDS, bands, parse_band_map("B9=x.tif"))
    with pytest.raises(InputError, match="is no file or band name"):
        match_bands(tmp_path, COMPETITION_BANDS, bands, parse_band_map("B1=nothing.tif"))
    with pytest.raises(InputError, match="expected MODEL_BAND=FILE"):
        parse_band_map("B1")


def test_band_map_numbers_the_bands_of_a_stack(tmp_path):
    stack = [SceneBand(tmp_path / "s.tif", i, None, f"band {i}") for i in range(1, 7)]
    result = match_bands(tmp_path / "s.tif", ("B1", "B2"), stack, parse_band_map("B1=6,B2=3"), stack=True)
    assert [source.index for source in result.sources] == [6, 3]
    with pytest.raises(InputError, match="has bands 1..6"):
        match_bands(tmp_path / "s.tif", ("B1",), stack, parse_band_map("B1=7"), stack=True)


def test_model_band_names_fallbacks():
    warnings = []
    names, source = band_names(5, {"band_names": ["B2", "B3", "B4", "B6", "B10"]}, {"bands": [0, 1, 2, 4, 5]},
                               warnings.append)
    assert names == ("B2", "B3", "B4", "B6", "B10") and source == "the model's config"
    names, _ = band_names(5, {"band_names": ["B1", "B2", "B3", "B4", "B5"]}, {"bands": [1, 2, 3, 5, 9]},
                          warnings.append)
    assert names == ("B2", "B3", "B4", "B6_VCID1", "BQA")  # placeholder names defer to the run's bands
    assert not warnings
    names, _ = band_names(5, {}, {}, warnings.append)
    assert names == COMPETITION_BANDS and len(warnings) == 1 and "assuming the competition's five" in warnings[0]
    with pytest.raises(InputError, match="does not name them"):
        band_names(4, {}, {}, warnings.append)
    assert is_placeholder(["Band1", "Band2"]) and not is_placeholder(["B2", "B3"])


def test_class_mask_encodings():
    nodata = np.array([[False, False, True]])
    binary = class_mask(np.array([[0.5, 0.51, 0.9]], np.float32), nodata, binary_info(), 0.5, 1)
    np.testing.assert_array_equal(binary, [[0, 255, 1]])
    info = ModelInfo(COMPETITION_BANDS, "test", "multiclass", ("background", "glacier", "debris", "lake"),
                     (0, 85, 170, 255), 0.5)
    probability = np.array([[[0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.1, 0.7], [0.9, 0, 0, 0.1]]], np.float32)
    np.testing.assert_array_equal(class_mask(probability, nodata, info, 0.5, 1), [[170, 255, 1]])
    with pytest.raises(InputError, match="one probability per pixel"):
        class_mask(probability[..., 0], nodata, info, 0.5, 1)


def test_nodata_value_is_no_class():
    assert nodata_value((0, 255)) == 1
    assert nodata_value((0, 85, 170, 255)) == 1
    assert nodata_value((0, 1, 2)) == 3


# ----------------------------------------------------------------------------------------------
# Strip-wise tiling equals one whole-scene predict_tiles call
# ----------------------------------------------------------------------------------------------


def contextual(batch):
    """A fake network whose output depends on the window (so seams and blending show)."""
    batch = np.asarray(batch)
    return 1 / (1 + np.exp(-(batch[..., 0] - batch[..., 1].mean(axis=(1, 2), keepdims=True)) * 4))


@pytest.mark.parametrize(("height", "width", "tta"), [(100, 70, True), (37, 50, False), (16, 130, False)])
def test_strips_equal_the_whole_scene_blend(height, width, tta):
    image = np.random.default_rng(1).uniform(0, 1, (height, width, 3)).astype(np.float32)
    image[:3, :5] = np.nan
    window, overlap = 32, 8
    whole = solution.predict_tiles(contextual, [image], tta=tta, window=window, overlap=overlap, batch_size=8)[0]
    plan = plan_strips(height, width, window, overlap)
    pieces = list(predict_strips(lambda row, rows: image[row:row + rows], contextual, plan, tta, window, overlap, 8))
    assert [row for row, _, _ in pieces] == sorted({row for row, _, _ in pieces})
    rows = np.concatenate([probability for _, probability, _ in pieces])
    nodata = np.concatenate([mask for _, _, mask in pieces])
    assert rows.shape == (height, width)
    np.testing.assert_allclose(rows, whole, atol=2e-6)
    np.testing.assert_array_equal(nodata, ~np.isfinite(image).all(axis=-1))


# ----------------------------------------------------------------------------------------------
# Scenes on disk: georeferencing, no-data, outlines and areas
# ----------------------------------------------------------------------------------------------


def check_outlines(summary, mask):
    """Every outline's area is its pixel count times the pixel area; together they cover the glacier pixels."""
    features = geojson_features(summary.geojson_path)
    rows, srs, app_id = gpkg_rows(summary.gpkg_path)
    assert app_id == 0x47504B47 and srs == 32645
    assert len(features) == len(rows) > 0
    total = 0
    for feature, (blob, name, value, km2, pixels) in zip(features, rows):
        props = feature["properties"]
        assert (props["class"], props["value"], props["pixels"]) == (name, value, pixels) == ("glacier", 255, pixels)
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.area == pytest.approx(pixels * 900)
        assert km2 == pytest.approx(props["area_km2"]) == pytest.approx(pixels * PIXEL_KM2)
        assert blob[:2] == b"GP" and struct.unpack("<i", blob[4:8])[0] == 32645
        assert shapely.from_wkb(blob[40:]).equals(polygon)
        total += pixels
    return total, features


def test_stack_with_descriptions(tmp_path):
    bands = scene_bands()
    scene = write_tif(tmp_path / "LC08_stack.tif", bands, descriptions=["SR_B2", "SR_B3", "SR_B4", "SR_B6", "ST_B10"])
    summary = predict_scene(binary_info(), scene, tmp_path / "out", forward=first_band, window=32, overlap=8,
                            probabilities=True, min_area=0, progress=False, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "LC08_stack_mask.tif", "LC08_stack_outlines.geojson", "LC08_stack_outlines.gpkg",
        "LC08_stack_probabilities.tif"]  # nothing temporary left behind
    mask, profile = read_mask(summary.mask_path)
    with rasterio.open(scene) as source:
        assert (profile["crs"], profile["transform"]) == (source.crs, source.transform)
        assert (profile["height"], profile["width"]) == (source.height, source.width)
    assert profile["nodata"] == 1 and profile["tiled"] and profile["compress"] == "deflate"
    np.testing.assert_array_equal(mask, expected_mask(bands))
    assert summary.nodata_pixels == (mask == 1).sum() == 6 * bands.shape[2]
    with rasterio.open(summary.probability_path) as probability:
        values = probability.read(1)
        assert probability.descriptions == ("glacier",) and np.isnan(probability.nodata)
    assert np.isnan(values[:6]).all()
    np.testing.assert_allclose(values[6:], bands[0, 6:])
    total, features = check_outlines(summary, mask)
    assert total == (mask == 255).sum() == summary.class_pixels[255]
    for path in (summary.gpkg_path, summary.geojson_path):
        assert ogr_features_and_epsg(path) == (len(features), 32645)
    assert summary.outlines.classes[0].area_km2 == pytest.approx(total * PIXEL_KM2)
    assert "glacier" in summary.line() and "km2" in summary.line()


@pytest.mark.parametrize(("names", "rows", "prefix"), [
    (L8_FILES, L8_ROW, "LC08_L2SP_140041_20201030_20201106_02_T1"),
    (L7_FILES, L7_ROW, "LE07_L1TP_140041_20001030_20200917_02_T1"),
])
def test_band_folders_in_landsat_naming(tmp_path, names, rows, prefix):
    bands = scene_bands(40, 50, seed=2)
    folder = write_folder(tmp_path / "scene", bands, names, rows, prefix)
    seen = []

    def check_order(batch):  # the model's bands arrive in its order, whatever the file numbering
        seen.append(np.asarray(batch)[..., 1:])
        return first_band(batch)

    summary = predict_scene(binary_info(), folder, tmp_path / "out", forward=check_order, window=32, overlap=8,
                            tta=False, min_area=0.0005, progress=False, log=lambda m: None)
    assert summary.name == prefix and summary.mask_path.name == f"{prefix}_mask.tif"
    mask, profile = read_mask(summary.mask_path)
    assert (profile["crs"], profile["transform"]) == (rasterio.crs.CRS.from_string(UTM), TRANSFORM)
    np.testing.assert_array_equal(mask, expected_mask(bands))
    window = next(batch for batch in seen)[0]
    np.testing.assert_array_equal(window[10:20, :20], np.moveaxis(bands[1:, 10:20, :20], 0, -1))


def test_min_area_drops_specks_from_the_outlines_only(tmp_path):
    bands = scene_bands()
    scene = write_tif(tmp_path / "s.tif", bands, descriptions=["blue", "green", "red", "swir1", "thermal"])
    kwargs = dict(forward=first_band, window=32, overlap=8, tta=False, progress=False, log=lambda m: None)
    everything = predict_scene(binary_info(), scene, tmp_path / "all", min_area=0, **kwargs)
    filtered = predict_scene(binary_info(), scene, tmp_path / "big", min_area=1.5 * PIXEL_KM2, **kwargs)
    small = [f for f in geojson_features(everything.geojson_path) if f["properties"]["pixels"] == 1]
    assert len(small) >= 1  # the planted speck
    kept = geojson_features(filtered.geojson_path)
    assert all(f["properties"]["pixels"] >= 2 for f in kept)
    assert len(kept) == len(geojson_features(everything.geojson_path)) - len(small)
    assert filtered.outlines.classes[0].dropped == len(small) and "specks" in filtered.line()
    np.testing.assert_array_equal(read_mask(filtered.mask_path)[0], read_mask(everything.mask_path)[0])


def test_uint16_with_scale_offset_and_nodata_tag(tmp_path):
    bands = scene_bands(40, 40, seed=3)
    digital = np.round(bands / 2.75e-5).astype(np.uint16)  # Collection 2 style: DN = reflectance / scale
    digital[:, 20:, :3] = 65535  # a fill value declared in the no-data tag, not zeros
    path = tmp_path / "dn.tif"
    profile = dict(driver="GTiff", width=40, height=40, count=5, dtype="uint16", crs=UTM, transform=TRANSFORM,
                   nodata=65535)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(digital)
        dataset.scales = (2.75e-5,) * 5
        dataset.offsets = (0.0,) * 5
        for index, name in enumerate(["B1", "B2", "B3", "B5", "B6_VCID1"], start=1):
            dataset.set_band_description(index, name)
    logged, warned = [], []
    summary = predict_scene(binary_info(), path, tmp_path / "out", forward=first_band, window=32, overlap=8,
                            tta=False, progress=False, log=logged.append, warn=warned.append)
    mask, _ = read_mask(summary.mask_path)
    expected = expected_mask(bands)
    expected[20:, :3] = 1
    np.testing.assert_array_equal(mask, expected)
    assert any("scaled by the file's scale 2.75e-05" in line for line in logged) and not warned


def test_units_far_from_the_training_range_warn(tmp_path):
    bands = scene_bands(32, 32) * 10000  # reflectance x 10000, a model trained on 0..1
    scene = write_tif(tmp_path / "s.tif", bands, descriptions=["B1", "B2", "B3", "B5", "B6_VCID1"])
    warned = []
    predict_scene(binary_info(), scene, tmp_path / "out", forward=lambda b: first_band(b) / 1e4, window=32,
                  overlap=8, tta=False, progress=False, log=lambda m: None, warn=warned.append)
    assert len(warned) == 5 and "far outside the range the model was trained on" in warned[0]


def test_geographic_crs_areas_are_equal_area(tmp_path):
    bands = scene_bands(30, 30)
    transform = Affine(0.001, 0, 86.9, 0, -0.001, 28.1)
    scene = write_tif(tmp_path / "s.tif", bands, crs="EPSG:4326", transform=transform,
                      descriptions=["B1", "B2", "B3", "B5", "B6_VCID1"])
    summary = predict_scene(binary_info(), scene, tmp_path / "out", forward=first_band, window=32, overlap=8,
                            tta=False, min_area=0, progress=False, log=lambda m: None)
    for feature in geojson_features(summary.geojson_path):
        lat = np.radians(28.1 - 0.015)
        # a 0.001 x 0.001 degree pixel on the WGS84 ellipsoid at this latitude (to ~0.2%)
        pixel = (6378.137 * np.radians(0.001)) ** 2 * np.cos(lat) * (1 - 0.00669438) / (
            1 - 0.00669438 * np.sin(lat) ** 2) ** 2
        assert feature["properties"]["area_km2"] == pytest.approx(feature["properties"]["pixels"] * pixel, rel=3e-3)


def test_crs_less_scene_warns_and_stays_in_pixels(tmp_path):
    bands = scene_bands(30, 40)
    scene = write_tif(tmp_path / "plain.tif", bands, crs=None, transform=Affine.identity(),
                      descriptions=["B1", "B2", "B3", "B5", "B6_VCID1"])
    warned = []
    summary = predict_scene(binary_info(), scene, tmp_path / "out", forward=first_band, window=32, overlap=8,
                            tta=False, progress=False, log=lambda m: None, warn=warned.append)
    assert any("no coordinate reference system; outlines will be in pixel units" in w for w in warned)
    features = geojson_features(summary.geojson_path)
    assert all(f["properties"]["area_km2"] is None for f in features)
    assert sum(f["properties"]["pixels"] for f in features) == (read_mask(summary.mask_path)[0] == 255).sum()
    assert gpkg_rows(summary.gpkg_path)[1] == -1
    assert " px in " in summary.line()


def test_undescribed_stack_is_taken_in_model_order_with_a_warning(tmp_path):
    scene = write_tif(tmp_path / "s.tif", scene_bands(32, 32))
    warned = []
    predict_scene(binary_info(), scene, tmp_path / "out", forward=first_band, window=32, overlap=8, tta=False,
                  progress=False, log=lambda m: None, warn=warned.append)
    assert any("carry no descriptions; assuming they are in the model's order" in w for w in warned)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_unwritable_output_fails_before_reading_the_scene(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write to the output folder"):
        predict_scene(binary_info(), tmp_path / "missing-scene", blocker / "out", forward=first_band)
    with pytest.raises(InputError, match="output folder is a file"):
        predict_scene(binary_info(), tmp_path / "missing-scene", blocker, forward=first_band)


def test_mismatched_band_grids_are_refused(tmp_path):
    folder = write_folder(tmp_path / "scene", scene_bands(32, 32), ["B2", "B3", "B4", "B6"], {}, "x")
    write_tif(folder / "x_B10.TIF", np.ones((32, 40), np.float32))
    with pytest.raises(InputError, match=r"x_B10.TIF: size 40x32 differs"):
        predict_scene(binary_info(), folder, tmp_path / "out", forward=first_band, log=lambda m: None)


def test_a_failure_mid_scene_leaves_no_files(tmp_path):
    scene = write_tif(tmp_path / "s.tif", scene_bands(70, 40), descriptions=["B1", "B2", "B3", "B5", "B6_VCID1"])
    calls = []

    def fails_on_the_second_strip(batch):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("device lost")
        return first_band(batch)

    with pytest.raises(RuntimeError, match="device lost"):
        predict_scene(binary_info(), scene, tmp_path / "out", forward=fails_on_the_second_strip, window=32,
                      overlap=8, tta=False, batch_size=2, probabilities=True, progress=False, log=lambda m: None)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_rasterio_is_a_one_line_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(InputError, match=r'pip install -e "\.\[geo\]"'):
        predict_scene(binary_info(), tmp_path, tmp_path / "out", forward=first_band)


def test_importing_the_package_does_not_need_rasterio():
    code = ("import sys; import keras_glacier, keras_glacier.predict, keras_glacier.scenes, keras_glacier.scenes.cli; "
            "assert 'rasterio' not in sys.modules and 'shapely' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# The real network, through the command line
# ----------------------------------------------------------------------------------------------


def test_cli_with_a_real_model(tmp_path, capsys):
    from convert.parity import randomize_weights
    from keras_glacier.model import build_deeplab

    model = build_deeplab(5, encoder="resnet18")  # any network: the scene windows, not the encoder, are tested
    randomize_weights(model, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    bands = scene_bands(40, 48)
    folder = write_folder(tmp_path / "scene", bands, L8_FILES, L8_ROW, "LC08_L2SP_140041_20201030_20201106_02_T1")
    code = predict.main([str(run), "--scene", str(folder), "--out", str(tmp_path / "out"), "--window", "32",
                         "--overlap", "8", "--no-tta", "--batch-size", "2", "--min-area", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: the model does not name its bands" in captured.err
    assert captured.out.startswith("LC08_L2SP_140041_20201030_20201106_02_T1: 48x40 px, 4 windows")
    mask, profile = read_mask(tmp_path / "out" / "LC08_L2SP_140041_20201030_20201106_02_T1_mask.tif")
    assert profile["transform"] == TRANSFORM and mask.shape == (40, 48)
    assert set(np.unique(mask[6:])) <= {0, 255} and (mask[:6] == 1).all()
    code = predict.main([str(run), "--scene", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert code == 2 and capsys.readouterr().err.startswith("error: ")
