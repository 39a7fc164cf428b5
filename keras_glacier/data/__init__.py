"""Data layer: find and read tiles, band statistics, augmentation, the Keras PyDataset, demo data.

One module per job: ``sources`` (discover and pair files, read them), ``layouts`` (what each
label pixel means: HKH mask layouts, band-folder values, classes per task), ``bands`` (channel
names, ``--bands`` presets, selection, no-data rule), ``labels`` (class fractions of a split, the
no-glacier refusal), ``stats``, ``augment``, ``cache``, ``dataset``, ``split``, ``demo``,
``export``, ``npyfile``. Nothing here knows about models or imports torch (``solution.py``'s band-folder helpers
are imported on first use of a band-folder dataset; albumentations, which imports torch, on first
use of augmentation). ``GlacierSequence`` and ``EpochSync`` load on first access: they import keras.
"""

from keras_glacier.data.augment import AugmentConfig, Augmenter
from keras_glacier.data.bands import HKH_CHANNELS, BandSelection, band_names_mismatch, describe_bands, parse_bands
from keras_glacier.data.demo import make_demo_band_folders, make_demo_dataset
from keras_glacier.data.errors import InputError
from keras_glacier.data.export import export_band_folders
from keras_glacier.data.labels import LabelSummary, label_summary
from keras_glacier.data.layouts import LAYOUTS, resolve_layout
from keras_glacier.data.sources import DatasetSource, Sample, discover, read_sample
from keras_glacier.data.split import load_split, save_split, split_by_scene
from keras_glacier.data.stats import BandStats, compute_stats, from_unit, to_unit

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "BandSelection",
    "BandStats",
    "DatasetSource",
    "EpochSync",
    "GlacierSequence",
    "HKH_CHANNELS",
    "InputError",
    "LAYOUTS",
    "LabelSummary",
    "Sample",
    "band_names_mismatch",
    "compute_stats",
    "describe_bands",
    "discover",
    "export_band_folders",
    "from_unit",
    "label_summary",
    "load_split",
    "make_demo_band_folders",
    "make_demo_dataset",
    "parse_bands",
    "read_sample",
    "resolve_layout",
    "save_split",
    "split_by_scene",
    "to_unit",
]


def __getattr__(name: str):
    if name in ("GlacierSequence", "EpochSync"):
        from keras_glacier.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
