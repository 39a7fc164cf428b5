"""--val-scenes holds out exactly the named scenes, and refuses a scene the data does not have."""

from __future__ import annotations

import json

import pytest

from keras_glacier.errors import InputError, UsageError
from keras_glacier.training.cli import build_parser, config_from_args
from keras_glacier.training.config import TrainConfig
from keras_glacier.training.data import prepare_data


def test_val_scenes_hold_out_exactly_those_scenes(demo_tiff_root, tmp_path):
    config = config_from_args(build_parser().parse_args(["--data", str(demo_tiff_root), "--val-scenes", "01"]))
    _, _, _, train, val, _, _ = prepare_data(config, tmp_path, resume=False)
    assert {s.scene_id for s in val} == {"01"} and {s.scene_id for s in train} == {"00"}
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["val_scenes"] == ["01"] and split["train_scenes"] == ["00"]


def test_unknown_scene_is_one_line_listing_the_available_ones(demo_tiff_root, tmp_path):
    config = TrainConfig(data=str(demo_tiff_root), val_scenes="01,07")
    with pytest.raises(UsageError) as caught:
        prepare_data(config, tmp_path, resume=False)
    message = str(caught.value)
    assert "\n" not in message and "no scene 07" in message and "available scenes: 00, 01" in message
    with pytest.raises(UsageError, match="none is left for training"):
        prepare_data(TrainConfig(data=str(demo_tiff_root), val_scenes="00,01"), tmp_path, resume=False)


def test_val_scenes_settings_are_checked():
    assert TrainConfig(val_scenes=["00", "03"]).val_scenes == "00,03"
    with pytest.raises(UsageError, match="--val-scenes needs"):
        TrainConfig(val_scenes=" , ")
    with pytest.raises(UsageError, match="--folds"):
        TrainConfig(val_scenes="00", folds=2)


def test_default_bands_on_unnamed_band_folders_are_all_of_them(demo_tiff_root, tmp_path):
    """Folders Band1..Band5 with files named by tile id only do not say what they measure (as everest-west)."""
    import shutil

    from keras_glacier.data.sources import discover
    from keras_glacier.training.data import resolve_bands

    for folder in sorted(demo_tiff_root.iterdir()):
        (tmp_path / folder.name).mkdir()
        for tif in folder.glob("*.tif"):
            tile = "_".join(tif.stem.rsplit("_", 2)[-2:])
            name = tif.name if folder.name == "label" else f"L7_{tile}.tif"
            shutil.copy(tif, tmp_path / folder.name / name)
    source = discover(tmp_path)
    assert source.band_names == ("Band1", "Band2", "Band3", "Band4", "Band5")
    with pytest.raises(InputError, match="preset competition needs"):  # named explicitly, the preset cannot resolve
        source.select_bands("competition")
    assert resolve_bands(source, TrainConfig().bands) == ((0, 1, 2, 3, 4), list(source.band_names))
