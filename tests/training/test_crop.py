"""The loader's crop: decided by every tile's shape, so that no tile is cut or blown up by the first one."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from keras_glacier.training.data import effective_crop


@pytest.mark.parametrize("requested, shapes, expected", [
    (256, [(160, 160)] * 9, None),                # everest-west: whole tiles, nothing padded
    (256, [(100, 100), (160, 160)], 160),         # whole tiles, the smaller padded to the largest
    (128, [(512, 512)] * 3, 128),                 # HKH slices: cropped
    (160, [(160, 480), (320, 480)], 160),         # longer than the crop on one side: cropped, not made 480 x 480
    (160, [(160, 160), (480, 480)], 160),         # the larger tile decides, wherever it is in the list
    (None, [(32, 32), (48, 64)], 64),             # validation: every tile whole, padded to the longest side
    (None, [(48, 64), (32, 32)], 64),
    (None, [(30, 30)], 32),                       # up to a multiple of the output stride
    (128, [], 128),                               # no tiles
])
def test_the_crop_follows_every_tile(requested, shapes, expected):
    assert effective_crop(requested, shapes) == expected


def write_tiles(root, shapes):
    """A band-folder dataset of 5 bands and a label, tile ``00_0i`` of ``shapes[i]``, every pixel labelled."""
    rng = np.random.default_rng(0)
    for band in range(1, 6):
        (root / f"Band{band}").mkdir(parents=True)
    (root / "label").mkdir()
    for i, shape in enumerate(shapes):
        for band in range(1, 6):
            tifffile.imwrite(root / f"Band{band}" / f"B{band}_00_0{i}.tif", rng.integers(0, 255, shape, dtype=np.uint8))
        tifffile.imwrite(root / "label" / f"Y_output_resized_00_0{i}.tif", np.where(rng.random(shape) < 0.5, 0, 255)
                         .astype(np.uint8))
    return root


def test_validation_and_statistics_batches_hold_every_pixel_of_tiles_of_different_sizes(tmp_path):
    """Tiles of different sizes, the larger ones last: every labelled pixel of each reaches validation and
    the BatchNorm pass (the first tile's size had cut the others to their centres)."""
    from keras_glacier.constants import IGNORE_INDEX
    from keras_glacier.data.sources import discover
    from keras_glacier.data.stats import compute_stats
    from keras_glacier.training.config import TrainConfig
    from keras_glacier.training.data import make_datasets, statistics_sequence

    shapes = [(32, 32), (48, 64), (40, 24)]
    source = discover(write_tiles(tmp_path / "data", shapes))
    samples = sorted(source.samples, key=lambda sample: sample.sample_id)
    bands = source.default_bands
    stats = compute_stats(samples, bands)
    config = TrainConfig(data=str(tmp_path / "data"), crop=32, batch_size=2, workers=1)
    train_seq, val_seq = make_datasets(config, tmp_path / "run", samples, samples, stats, bands)
    whole = statistics_sequence(config, tmp_path / "run", samples, stats, bands, 3)
    expected = sum(h * w for h, w in shapes)
    for sequence in (val_seq, whole):
        labels = np.concatenate([np.asarray(sequence[i][1]).reshape(-1) for i in range(len(sequence))])
        assert np.sum(labels != IGNORE_INDEX) == expected
    crops = {tuple(np.asarray(train_seq[i][0]).shape[1:3]) for i in range(len(train_seq))}
    assert crops == {(32, 32)}, "training crops are the requested size, whichever tile comes first"
