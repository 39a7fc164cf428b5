"""Scene split: no scene on both sides, both sides non-empty, seeded, saved and loaded by id."""

import json

import pytest

from keras_glacier.data.errors import InputError
from keras_glacier.data.sources import NPY, Sample
from keras_glacier.data.split import load_split, save_split, split_by_scene


def make_samples(tiles_per_scene):
    return [
        Sample(f"slice_{s}_image_{k}", f"slice_{s}", NPY, (f"/d/slice_{s}_image_{k}.npy",), f"/d/m_{s}_{k}.npy", "n")
        for s, count in enumerate(tiles_per_scene)
        for k in range(count)
    ]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("val_fraction", [0.01, 0.2, 0.5, 0.9])
def test_scenes_never_leak_and_both_sides_are_used(seed, val_fraction):
    samples = make_samples([3, 1, 7, 2, 5, 4])
    train, val = split_by_scene(samples, val_fraction, seed)
    assert {s.scene_id for s in train}.isdisjoint({s.scene_id for s in val})
    assert train and val
    assert sorted(train + val, key=samples.index) == samples
    assert train == [s for s in samples if s in train]  # input order kept


def test_fraction_is_roughly_respected_and_seeded():
    samples = make_samples([5] * 20)
    train, val = split_by_scene(samples, 0.2, seed=0)
    assert len(val) == 20
    assert split_by_scene(samples, 0.2, seed=0) == (train, val)
    assert split_by_scene(samples, 0.2, seed=1) != (train, val)


def test_small_cases():
    two = make_samples([4, 4])
    train, val = split_by_scene(two, 0.2)
    assert len({s.scene_id for s in train}) == 1 and len({s.scene_id for s in val}) == 1
    one = make_samples([6])
    assert split_by_scene(one, 0.2) == (one, [])  # holding out part of the only scene would leak
    assert split_by_scene(two, 0.0) == (two, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_scene(two, 1.0)


def test_demo_tiff_scenes_split_whole(demo_tiff_source):
    train, val = split_by_scene(demo_tiff_source.samples, 0.5, seed=0)
    assert {s.scene_id for s in train} | {s.scene_id for s in val} == {"00", "01"}
    assert {s.scene_id for s in train}.isdisjoint({s.scene_id for s in val})


def test_save_and_load(tmp_path):
    samples = make_samples([2, 3, 2])
    train, val = split_by_scene(samples, 0.3, seed=4)
    path = tmp_path / "split.json"
    save_split(path, train, val, seed=4, val_fraction=0.3)
    data = json.loads(path.read_text())
    assert data["seed"] == 4 and data["val"] == [s.sample_id for s in val]
    assert data["val_scenes"] == sorted({s.scene_id for s in val})
    assert load_split(path, list(reversed(samples))) == (train, val)


def test_load_errors(tmp_path):
    samples = make_samples([2, 2])
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["slice_0_image_0"], "val": ["slice_9_image_9"]}))
    with pytest.raises(InputError, match=r"split\.json: val sample 'slice_9_image_9' is not in the dataset"):
        load_split(path, samples)
    path.write_text(json.dumps({"train": ["slice_0_image_0"], "val": ["slice_0_image_0"]}))
    with pytest.raises(InputError, match=r"split\.json: sample 'slice_0_image_0' is listed in both"):
        load_split(path, samples)
    path.write_text("[]")
    with pytest.raises(InputError, match=r"split\.json: expected a JSON object"):
        load_split(path, samples)
    with pytest.raises(InputError, match=r"nope\.json: split file not found"):
        load_split(tmp_path / "nope.json", samples)
