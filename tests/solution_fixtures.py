"""Test data for the solution.py tests: a seeded network and GlacierHack-like band folders.

A freshly initialised network predicts an almost constant probability (its BatchNorm running
statistics are the identity and its head is tiny), which would let flip, tiling and no-data bugs
pass unnoticed; :func:`make_test_model` randomises the statistics and calibrates the head so
that the probabilities vary across the tile and about half of the pixels are glacier.
"""

import numpy as np
import pytest
import tifffile
import torch

import solution

#: File name prefixes per band, as in the GlacierHack release (one band per folder).
BAND_PREFIXES = ("B2_B2_masked", "B3_B3_masked", "B4_B4_masked", "B6_B6_masked", "B10_B10_masked")

#: Georeferencing written on every test band file; the masks must carry them.
GEO_EXTRATAGS = [
    (33550, 12, 3, (30.0, 30.0, 0.0), True),  # ModelPixelScaleTag
    (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 3100000.0, 0.0), True),  # ModelTiepointTag
    (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32645), True),  # GeoKeyDirectory
    (34737, 2, 0, "WGS 84 / UTM zone 45N|", True),  # GeoAsciiParamsTag
    (42113, 2, 0, "0", True),  # GDAL_NODATA: must NOT be copied
]


def scene(height, width, channels=5, seed=0):
    """Raw band values (H, W, C) in about [0, 1000] with smooth structure and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (channels, 2))
    bands = [
        500 + 400 * np.sin(xx / 7 + phase[c, 0]) * np.cos(yy / 9 + phase[c, 1]) for c in range(channels)
    ]
    image = np.stack(bands, axis=-1) + rng.normal(0, 30, (height, width, channels))
    return image.astype(np.float32)


def make_test_model(in_channels=5, seed=0, config=None):
    """An eval-mode AttentionDeepLabV3Plus with non-trivial weights and statistics (see module doc).

    ``config``: a model.pth configuration (e.g. a multi-class one) to build from instead of the
    binary default; its ``num_bands`` wins over ``in_channels``.
    """
    torch.manual_seed(seed)
    if config is not None:
        model = solution.AttentionDeepLabV3Plus.from_config(config).eval()
        in_channels = model.in_channels
    else:
        model = solution.AttentionDeepLabV3Plus(in_channels=in_channels).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
        model.normalize.lo.zero_()
        model.normalize.hi.fill_(1000.0)
        model.normalize.mean.copy_(torch.linspace(0.45, 0.55, in_channels))
        model.normalize.std.copy_(torch.linspace(0.25, 0.3, in_channels))
        reference = torch.from_numpy(scene(64, 64, in_channels, seed=123).transpose(2, 0, 1)[None].copy())
        logits = model(reference)
        model.head.weight.mul_(2.0 / float(logits.std()))
        logits = model(reference)
        # Centre each output: about half the pixels glacier (binary), every class present (K classes).
        model.head.bias.sub_(logits.transpose(0, 1).reshape(logits.shape[1], -1).median(dim=1).values)
    return model


def save_weights(model, path, half=False):
    """Save the plain state dict the way the converter does (optionally as float16)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def save_model_pth(model, path, config=None, half=False):
    """Save ``model`` as a ``keras-glacier/1`` model.pth: its configuration beside its weights."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"format": "keras-glacier/1", "config": dict(config or model.config), "state_dict": state}, path)
    return path


def multiclass_config(num_bands=5, class_names=("background", "clean_ice", "debris"), **extra):
    """A multi-class model.pth configuration (class values derived from the names)."""
    return {"num_bands": num_bands, "task": "multiclass", "class_names": list(class_names), **extra}


def write_band_dataset(root, ids=("02_07", "03_01"), size=(64, 64), channels=5, seed=0, geotags=True):
    """Band1..BandN folders of single-band float32 TIFFs with band-specific file names."""
    images = {}
    for index, tile_id in enumerate(ids):
        images[tile_id] = scene(size[0], size[1], channels, seed=seed + index)
    for band in range(1, channels + 1):
        folder = root / f"Band{band}"
        folder.mkdir(parents=True, exist_ok=True)
        for tile_id, image in images.items():
            name = f"{BAND_PREFIXES[(band - 1) % len(BAND_PREFIXES)]}_{tile_id}.tif"
            tifffile.imwrite(folder / name, image[..., band - 1], extratags=GEO_EXTRATAGS if geotags else ())
    return images


def assert_solution_reproduces_run(run_dir, size=64, bands=5, atol=1e-4):
    """solution.py's glacier probability from the run's model.pth equals model.keras's on random tiles."""
    import keras

    from keras_glacier.inference import keras_forward

    loaded = solution.load_model(str(run_dir / "model.pth"), "cpu")
    images = np.random.default_rng(1).uniform(0, 1, (1, size, size, bands)).astype("float32")
    with torch.no_grad():
        torch_prob = loaded.probabilities(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()[:, 0]
    keras_prob = keras_forward(keras.saving.load_model(run_dir / "model.keras", compile=False))(images)
    np.testing.assert_allclose(torch_prob, keras_prob, atol=atol)


def assert_ensemble_pth(run_dir, members: int, threshold: float) -> None:
    """The run's model.pth is an ensemble of ``members`` networks, each carrying the run's ``threshold``."""
    content = torch.load(run_dir / "model.pth", map_location="cpu", weights_only=True)
    assert content["format"] == "keras-glacier-ensemble/1" and len(content["members"]) == members
    assert [m["config"]["threshold"] for m in content["members"]] == pytest.approx([threshold] * members)
