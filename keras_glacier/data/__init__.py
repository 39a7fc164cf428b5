"""Data layer: find and read tiles, band statistics, augmentation, the Keras PyDataset, demo data.

One module per job: ``sources`` (discover and pair files, read them), ``bands`` (band selection,
label compression, no-data rule), ``stats``, ``augment``, ``cache``, ``dataset``, ``split``,
``demo``. Nothing here knows about models or imports torch (``solution.py``'s band-folder helpers
are imported on first use of a band-folder dataset; albumentations, which imports torch, on first
use of augmentation). ``GlacierSequence`` and ``EpochSync`` load on first access: they import keras.
"""

from keras_glacier.data.augment import AugmentConfig, Augmenter
from keras_glacier.data.bands import parse_bands
from keras_glacier.data.demo import make_demo_band_folders, make_demo_dataset
from keras_glacier.data.errors import InputError
from keras_glacier.data.export import export_band_folders
from keras_glacier.data.sources import DatasetSource, Sample, discover, read_sample
from keras_glacier.data.split import load_split, save_split, split_by_scene
from keras_glacier.data.stats import BandStats, compute_stats, from_unit, to_unit

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "BandStats",
    "DatasetSource",
    "EpochSync",
    "GlacierSequence",
    "InputError",
    "Sample",
    "compute_stats",
    "discover",
    "export_band_folders",
    "from_unit",
    "load_split",
    "make_demo_band_folders",
    "make_demo_dataset",
    "parse_bands",
    "read_sample",
    "save_split",
    "split_by_scene",
    "to_unit",
]


def __getattr__(name: str):
    if name in ("GlacierSequence", "EpochSync"):
        from keras_glacier.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
