"""Synthetic multispectral glacier scenes: the embedded default data of the training job and of tests.

The point is data that behaves like the real problem, not pretty pictures:

* classes are spectrally plausible (Landsat-8-like top-of-atmosphere reflectance, brightness
  temperature in kelvin): clean ice is bright in the visible and dark in SWIR, but so is snow, which
  is *not* glacier; debris-covered ice looks like the surrounding rock in every reflective band and
  is only a few kelvin cooler in the thermal band, while the thermal band itself drifts with
  elevation (lapse rate) and from scene to scene;
* topographic shading multiplies all reflective bands, so sunlit rock and shaded ice overlap in
  brightness;
* the result is that no single band separates glacier from background by a threshold (the best one
  stays far from a good MCC, see ``tests/data/test_demo.py``), while a multi-band rule does clearly
  better and spatial context (debris tongues below clean ice) helps further;
* shapes are smooth (FFT low-pass filtered noise), tiles of one scene overlap their neighbours and
  scenes differ, so a split by scene is meaningful;
* the HKH region mask (channel 2 of the mask) cuts off part of some scenes, a few tiles carry
  sensor no-data stripes (NaN in every channel, like Landsat 7 SLC-off gaps), and every band gets
  sensor noise;
* glacial lakes (turbid melt-water ponds next to glacier tongues) are a class of their own in
  multi-class band-folder labels; HKH masks have no lake channel, so there they are background.
  They come from a random stream of their own, so adding them left the rest of every scene as it
  was (the figures of the binary demo moved only where a lake replaced background).

Channels written (the HKH release's published order, Landsat 7 ETM+ numbering, 0-based; see
``bands.HKH_CHANNELS``): 0 B1 blue, 1 B2 green, 2 B3 red, 3 B4 NIR, 4 B5 SWIR-1, 5 B6_VCID1
thermal, 6 B6_VCID2 thermal (high gain), 7 B7 SWIR-2, 8 B8 panchromatic (reflectance; thermal as
brightness temperature in kelvin), 9 BQA (integer quality flags: a "bright" bit on snow and ice
alike, never on debris), 10 NDVI, 11 NDSI, 12 NDWI, 13 elevation (m), 14 slope (degrees). The
default preset ``competition`` (B1, B2, B3, B5, B6_VCID1) reads blue, green, red, SWIR-1 and
thermal, the bands of GlacierHack phase 1. Files: ``slice_<scene>_img_<k>.npy`` (k as ``000``)
and ``slice_<scene>_mask_<k>.npy``, as the release names them.

Everything is a pure function of ``seed`` (numpy ``default_rng``), so tests and runs see the same data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from keras_glacier.constants import DEFAULT_BANDS, PHASE2_VALUES
from keras_glacier.data.bands import HKH_CHANNELS
from keras_glacier.data.fileio import atomic_write

NUM_CHANNELS = len(HKH_CHANNELS)
CHANNEL_NAMES = HKH_CHANNELS
MASK_LAYOUTS = ("region", "onehot", "two")

# Classes of the generator: clean ice, firn (old snow on the glacier) and debris are glacier.
CLEAN_ICE, FIRN, DEBRIS, SNOW, ROCK, VEGETATION, WATER, LAKE = range(8)

# Mean reflectance per class of the Landsat 8 reflective bands B1..B9 (coastal, blue, green, red,
# NIR, SWIR-1, SWIR-2, pan, cirrus); the generator draws all nine (its random stream stays as it
# was) and writes the seven that Landsat 7 has. Rows follow the class constants above.
_REFLECTANCE = np.array(
    [
        [0.50, 0.48, 0.44, 0.40, 0.30, 0.030, 0.022, 0.42, 0.010],  # clean ice
        [0.62, 0.60, 0.57, 0.52, 0.40, 0.055, 0.040, 0.57, 0.010],  # firn
        [0.13, 0.13, 0.15, 0.18, 0.23, 0.26, 0.21, 0.16, 0.005],  # debris-covered ice
        [0.78, 0.78, 0.76, 0.73, 0.62, 0.130, 0.100, 0.75, 0.012],  # snow
        [0.14, 0.14, 0.16, 0.19, 0.24, 0.27, 0.22, 0.17, 0.005],  # rock
        [0.07, 0.06, 0.09, 0.06, 0.33, 0.18, 0.09, 0.08, 0.004],  # vegetation
        [0.09, 0.08, 0.07, 0.05, 0.03, 0.012, 0.008, 0.06, 0.004],  # water
        [0.15, 0.17, 0.16, 0.11, 0.05, 0.020, 0.012, 0.13, 0.004],  # glacial lake (turbid melt water)
    ],
    dtype=np.float32,
)
# Surface temperature (K) at the reference elevation, per class.
_TEMPERATURE = np.array([266.0, 264.0, 273.0, 263.0, 280.0, 282.0, 276.0, 275.0], dtype=np.float32)
_REFERENCE_ELEVATION = 4500.0
_LAPSE_RATE = -6.5 / 1000.0  # K per metre


@dataclass(frozen=True)
class DemoTile:
    """One generated tile: ``image`` (H, W, 15) float32, ``mask`` (H, W, 3) uint8 [clean ice, debris,
    HKH region], ``classes`` (H, W) the generator's classes (CLEAN_ICE ... LAKE)."""

    scene: int
    index: int
    image: np.ndarray
    mask: np.ndarray
    classes: np.ndarray | None = None


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``scale`` pixels."""
    height, width = shape
    noise = rng.standard_normal(shape)
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.rfftfreq(width)[None, :]
    envelope = np.exp(-0.5 * (2 * np.pi * scale) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * envelope, s=shape)
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _grid(tiles: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(tiles)))
    return int(np.ceil(tiles / cols)), cols


def _blur(field: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian blur (FFT, periodic edges) with standard deviation ``scale`` pixels."""
    ky = np.fft.fftfreq(field.shape[0])[:, None]
    kx = np.fft.rfftfreq(field.shape[1])[None, :]
    envelope = np.exp(-0.5 * (2 * np.pi * scale) ** 2 * (kx**2 + ky**2))
    return np.fft.irfft2(np.fft.rfft2(field) * envelope, s=field.shape)


def _glacial_lakes(
    rng: np.random.Generator, glacier: np.ndarray, rel: np.ndarray, s: float
) -> np.ndarray:
    """Melt-water lakes off the glacier but next to it, below the snowline (where tongues end).

    Drawn from their own random stream, so the rest of a scene is what it was before lakes existed.
    """
    near = _blur(glacier.astype(np.float64), 4 * s) > 0.04
    return ~glacier & near & (rel < 0.2) & (smooth_field(rng, glacier.shape, 5 * s) > 0.9)


def _scene(
    rng: np.random.Generator, shape: tuple[int, int], size: int, lake_rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene canvas: image (H, W, 15) float32, HKH mask (H, W, 3) uint8, class map (H, W)."""
    height, width = shape
    s = size / 128.0  # shapes scale with the tile size, so small test tiles still look like scenes
    # Terrain: a tilted surface plus relief; the snowline and the thermal offset differ per scene.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-1, 1, 2) * 900.0 / max(height, width)
    elevation = (
        rng.uniform(4000, 5000)
        + tilt[0] * (yy - height / 2)
        + tilt[1] * (xx - width / 2)
        + 600.0 * smooth_field(rng, shape, 40 * s)
        + 150.0 * smooth_field(rng, shape, 8 * s)
    )
    snowline = rng.uniform(4300, 4900)
    rel = (elevation - snowline) / 600.0

    glacier = smooth_field(rng, shape, 18 * s) + 0.9 * rel > 0.35
    # Debris covers the lower (tongue) parts of glaciers.
    debris = glacier & (smooth_field(rng, shape, 10 * s) - 1.2 * rel > -0.8)
    snow = ~glacier & (smooth_field(rng, shape, 12 * s) + 1.1 * rel > -0.4)
    # Old snow (firn) covers the upper glacier: glacier in the label, between ice and snow in the image.
    firn = glacier & ~debris & (smooth_field(rng, shape, 10 * s) + 0.8 * rel > 1.2)
    low = smooth_field(rng, shape, 14 * s) - 1.0 * rel
    water = ~glacier & ~snow & (smooth_field(rng, shape, 6 * s) > 1.9)
    vegetation = ~glacier & ~snow & ~water & (low > 1.4)

    classes = np.full(shape, ROCK, dtype=np.int8)
    classes[vegetation] = VEGETATION
    classes[water] = WATER
    classes[snow] = SNOW
    classes[glacier & ~debris & ~firn] = CLEAN_ICE
    classes[firn] = FIRN
    classes[debris] = DEBRIS
    if lake_rng is not None:
        classes[_glacial_lakes(lake_rng, glacier, rel, s)] = LAKE

    # Reflective bands: class spectrum x texture x topographic shading, plus sensor noise.
    gy, gx = np.gradient(elevation / 30.0)
    sun = rng.uniform(0, 2 * np.pi)
    shading = np.clip(0.85 + 0.4 * (np.cos(sun) * gx + np.sin(sun) * gy) / np.sqrt(1 + gx**2 + gy**2), 0.5, 1.15)
    texture = 1.0 + 0.12 * smooth_field(rng, shape, 3 * s)
    brightness = rng.uniform(0.85, 1.15)
    reflect = _REFLECTANCE[classes] * (shading * texture * brightness)[..., None]
    reflect += rng.normal(0.0, 0.012, reflect.shape).astype(np.float32)

    temperature = (
        _TEMPERATURE[classes]
        + _LAPSE_RATE * (elevation - _REFERENCE_ELEVATION)
        + rng.uniform(-4, 4)
        + 4.0 * (shading - 0.85)
        + 3.0 * smooth_field(rng, shape, 6 * s)
    )
    b10 = temperature + rng.normal(0.0, 0.6, shape)
    b11 = temperature - 1.0 + rng.normal(0.0, 0.6, shape)

    def index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) / np.maximum(a + b, 1e-3)

    blue, green, red, nir, swir, swir2, pan = (reflect[..., k] for k in (1, 2, 3, 4, 5, 6, 7))
    # BQA: integer flags; the "bright surface" bit fires on snow and clean ice alike (never debris).
    bqa = 672.0 + 1024.0 * (green > 0.35)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    image = np.stack(
        [blue, green, red, nir, swir, b10, b11, swir2, pan, bqa,
         index(nir, red), index(green, swir), index(green, nir), elevation, slope],
        axis=-1,
    ).astype(np.float32)  # fmt: skip

    # HKH region: some scenes are cut by a (slightly curved) region boundary.
    region = np.ones(shape, dtype=bool)
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * np.pi)
        dist = np.cos(angle) * (xx - width / 2) + np.sin(angle) * (yy - height / 2)
        dist += 6 * s * smooth_field(rng, shape, 30 * s)
        region = dist < rng.uniform(0.2, 0.45) * max(height, width)
    mask = np.stack([(classes == CLEAN_ICE) | (classes == FIRN), classes == DEBRIS, region], axis=-1)
    return image, mask.astype(np.uint8), classes


def _nodata_stripes(rng: np.random.Generator, image: np.ndarray) -> None:
    """Diagonal NaN stripes in every channel, like Landsat 7 SLC-off scan-line gaps."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    period = rng.integers(max(8, height // 6), max(9, height // 3))
    width_px = rng.integers(1, 4)
    stripes = ((xx + 3 * yy + rng.integers(0, period)) % period) < width_px
    image[stripes] = np.nan


def demo_tiles(scenes: int = 4, tiles_per_scene: int = 4, size: int = 64, seed: int = 0) -> Iterator[DemoTile]:
    """Generate tiles scene by scene: tiles of a scene overlap their neighbours on one canvas."""
    if scenes < 1 or tiles_per_scene < 1 or size < 8:
        raise ValueError("demo data needs scenes >= 1, tiles_per_scene >= 1 and size >= 8")
    rows, cols = _grid(tiles_per_scene)
    stride = max(1, (3 * size) // 4)
    shape = ((rows - 1) * stride + size, (cols - 1) * stride + size)
    for scene in range(scenes):
        rng = np.random.default_rng([seed, scene])
        image, mask, classes = _scene(rng, shape, size, lake_rng=np.random.default_rng([seed, scene, 1]))
        for k in range(tiles_per_scene):
            r, c = divmod(k, cols)
            window = np.s_[r * stride : r * stride + size, c * stride : c * stride + size]
            tile_image = image[window].copy()
            if rng.random() < 0.2:
                _nodata_stripes(rng, tile_image)
            yield DemoTile(scene, k, tile_image, mask[window].copy(), classes[window].copy())


def _mask_in_layout(mask: np.ndarray, layout: str) -> np.ndarray:
    """The generator's [clean ice, debris, HKH region] mask written in another layout (``layouts.py``)."""
    clean, debris, region = (mask[..., k].astype(bool) for k in range(3))
    if layout == "region":
        return mask
    if layout == "onehot":  # outside the region: all three channels 0
        return np.stack([clean & region, debris & region, ~(clean | debris) & region], axis=-1).astype(np.uint8)
    if layout == "two":  # no region: every pixel is labelled
        return np.stack([clean, debris], axis=-1).astype(np.uint8)
    raise ValueError(f"mask layout {layout!r}: expected one of {', '.join(MASK_LAYOUTS)}")


def make_demo_dataset(
    out_dir: str | os.PathLike, scenes: int = 4, tiles_per_scene: int = 4, size: int = 64, seed: int = 0,
    mask_layout: str = "region", dtype: np.dtype | type = np.float32,
) -> Path:
    """Write an HKH-release-style dataset: ``slice_<scene>_img_<k>.npy`` (H, W, 15) and ``slice_<scene>_mask_<k>.npy``.

    ``mask_layout``: region (default), onehot or two (``layouts.py``); ``dtype`` of the images
    (float64 like parts of the release, NaN no-data either way).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for tile in demo_tiles(scenes, tiles_per_scene, size, seed):
        mask = _mask_in_layout(tile.mask, mask_layout)
        for kind, array in (("img", tile.image.astype(dtype)), ("mask", mask)):
            atomic_write(out / f"slice_{tile.scene}_{kind}_{tile.index:03d}.npy", partial(np.save, arr=array))
    return out


#: File-name prefixes of the band folders in the GlacierHack test data (Band1 holds B2, ..., Band5 B10).
BAND_FOLDER_PREFIXES = ("B2_B2_masked_", "B3_B3_masked_", "B4_B4_masked_", "B6_B6_masked_", "B10_B10_masked_")
LABEL_PREFIX = "Y_output_resized_"
#: Generator class -> phase-2 value in multi-class band-folder labels (everything else background).
_PHASE2_OF_CLASS = {
    CLEAN_ICE: PHASE2_VALUES["glacier"], FIRN: PHASE2_VALUES["glacier"], DEBRIS: PHASE2_VALUES["debris"],
    LAKE: PHASE2_VALUES["lake"],
}  # fmt: skip


def band_folder_label(tile: DemoTile, task: str = "binary") -> np.ndarray:
    """The uint8 label of a demo tile as band folders carry it.

    binary: 0/255, glacier inside the HKH region (the demo's band folders always had this cut).
    multiclass: the phase-2 values 0/85/170/255 (background, glacier, debris, lake) over the whole
    tile: a band-folder label has no "ignore" value, and GlacierHack's labels cover whole tiles, so
    the class map is written as it is rather than calling glaciers beyond the region background.
    """
    if task == "binary":
        return ((tile.mask[..., 0] | tile.mask[..., 1]) & tile.mask[..., 2]).astype(np.uint8) * 255
    lookup = np.zeros(LAKE + 1, np.uint8)
    for generator_class, value in _PHASE2_OF_CLASS.items():
        lookup[generator_class] = value
    return lookup[tile.classes]


def make_demo_band_folders(
    out_dir: str | os.PathLike,
    tiles: int = 4,
    size: int = 64,
    seed: int = 0,
    with_labels: bool = True,
    scenes: int | None = None,
    task: str = "binary",
) -> Path:
    """Write GlacierHack-style band folders of float32 TIFFs from the same scenes as the npy demo.

    ``Band<k>/<prefix><scene>_<tile>.tif`` holds channel ``DEFAULT_BANDS[k-1]`` (blue, green, red,
    SWIR-1, thermal, named B2, B3, B4, B6, B10 by their prefixes as GlacierHack's Landsat 8 files
    are), with a different file name prefix in each folder like the real data;
    ``label/Y_output_resized_<id>.tif`` is uint8, see :func:`band_folder_label` (``task`` binary:
    0/255; multiclass: 0/85/170/255 with lakes). Tile ids look like ``02_07`` (scene 02, tile 07).
    """
    import tifffile

    if task not in ("binary", "multiclass"):
        raise ValueError(f"task {task!r}: expected binary or multiclass")
    scenes = scenes or max(1, int(np.ceil(tiles / 4)))
    per_scene = int(np.ceil(tiles / scenes))
    out = Path(out_dir)
    folders = [out / f"Band{k + 1}" for k in range(len(DEFAULT_BANDS))]
    for folder in [*folders, out / "label"] if with_labels else folders:
        folder.mkdir(parents=True, exist_ok=True)
    for count, tile in enumerate(demo_tiles(scenes, per_scene, size, seed)):
        if count >= tiles:
            break
        tile_id = f"{tile.scene:02d}_{tile.index:02d}"
        for folder, prefix, channel in zip(folders, BAND_FOLDER_PREFIXES, DEFAULT_BANDS):
            atomic_write(folder / f"{prefix}{tile_id}.tif", partial(tifffile.imwrite, data=tile.image[..., channel]))
        if with_labels:
            label = band_folder_label(tile, task)
            atomic_write(out / "label" / f"{LABEL_PREFIX}{tile_id}.tif", partial(tifffile.imwrite, data=label))
    return out
