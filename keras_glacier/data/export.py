"""Write tiles of any dataset as GlacierHack band folders, the only layout ``solution.py`` reads.

The use is an end-to-end check of the submission: export the validation tiles of a run (npy
slices or band folders alike), run ``solution.maskgeration`` on the copy, and score its masks.

Layout written: ``Band<k>/tile_<id>.tif`` (float32, the k-th selected band, raw values, NaN
no-data kept) and ``label/tile_<id>.tif`` (uint8: 0/255 for the binary task, the phase-2 value of
each class for the multi-class task, ``constants.class_values``). The id is the run of numbers in
the sample id (``slice_3_img_002`` -> ``3_002``, ``02_07`` stays ``02_07``), so ``solution.py`` pairs
the files of a tile, names its mask ``tile_<id>.tif`` and ``discover`` gives the copy the same
scenes as the source.

A band-folder label has no "ignore" value (255 means glacier there), so pixels the source
ignores (outside the HKH region, no-data) are written as background. No-data pixels keep their
NaN bands and are ignored again when the copy is read; pixels outside the HKH region are not.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from keras_glacier.constants import IGNORE_INDEX, class_values
from keras_glacier.data.bands import check_bands
from keras_glacier.data.errors import InputError
from keras_glacier.data.fileio import atomic_write
from keras_glacier.data.layouts import class_names
from keras_glacier.data.sources import Sample, read_sample

LABEL_FOLDER = "label"
FILE_PREFIX = "tile_"


def export_tile_id(sample: Sample) -> str:
    """The numbers of the sample id joined by ``_``: what ``solution.tile_id_from_name`` reads back."""
    numbers = re.findall(r"\d+", sample.sample_id)
    return "_".join(numbers) if numbers else sample.sample_id


def label_values(sample: Sample) -> np.ndarray:
    """Label index -> value written (a 256-entry table; ignored pixels are written as background 0)."""
    table = np.zeros(256, np.uint8)
    values = class_values(class_names(sample.kind, sample.task))
    table[: len(values)] = values
    table[IGNORE_INDEX] = 0
    return table


def _prepare_folder(out: Path, folders: Sequence[str], overwrite: bool) -> None:
    """Refuse to mix with other files; with ``overwrite`` replace only what an earlier export wrote."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: export folder is a file")
    existing = sorted(os.listdir(out)) if out.is_dir() else []
    if not existing:
        return
    if not overwrite:
        raise InputError(f"{out}: export folder is not empty; choose an empty folder or pass overwrite=True")
    foreign = [name for name in existing if name not in folders]
    if foreign:
        raise InputError(f"{out}: holds {foreign[0]!r}, which no export wrote; refusing to overwrite this folder")
    for name in existing:
        shutil.rmtree(out / name)


def export_band_folders(
    samples: Sequence[Sample], bands: Sequence[int], out_dir: str | os.PathLike, overwrite: bool = False
) -> dict[str, Sample]:
    """Write ``samples``' ``bands`` as ``out_dir/Band1..BandC`` (+ ``label/``); returns {tile id: sample}.

    ``bands`` index the source's channels (npy slices) or band folders, as in ``read_sample``.
    Samples without a label are exported without one; ``label/`` is written only when all have one.
    """
    bands = check_bands(bands)
    if not samples:
        raise InputError(f"{out_dir}: no tiles to export")
    ids: dict[str, Sample] = {}
    for sample in samples:
        tile_id = export_tile_id(sample)
        if tile_id in ids:
            raise InputError(
                f"{sample.image_paths[0]}: tile id {tile_id!r} is also the id of {ids[tile_id].image_paths[0]}"
            )
        ids[tile_id] = sample
    with_labels = all(sample.label_path is not None for sample in samples)
    band_folders = [f"Band{k + 1}" for k in range(len(bands))]
    out = Path(out_dir)
    _prepare_folder(out, [*band_folders, LABEL_FOLDER], overwrite)
    import tifffile

    for tile_id, sample in ids.items():
        image, label = read_sample(sample, bands)
        name = f"{FILE_PREFIX}{tile_id}.tif"
        for channel, folder in enumerate(band_folders):
            band = np.ascontiguousarray(image[..., channel])
            atomic_write(out / folder / name, partial(tifffile.imwrite, data=band))
        if with_labels:
            encoded = label_values(sample)[label]
            atomic_write(out / LABEL_FOLDER / name, partial(tifffile.imwrite, data=encoded))
    return ids
