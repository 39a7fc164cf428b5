"""The training data of a run: bands, split (or fold), statistics and the two datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from keras_glacier.errors import InputError, UsageError
from keras_glacier.training.config import AUTO, TrainConfig
from keras_glacier.training.run_folder import VALIDATION_RUN


def resolve_bands(source, spec: str) -> tuple[tuple[int, ...], list[str]]:
    """The band indices and names a ``--bands`` spec (names, indices or a preset) selects in ``source``.

    The default spec (the competition preset, named for HKH channels) means every band folder on
    band-folder data, as ``--bands`` documents: folders named Band1..BandN do not say what they
    measure, so the preset could not be resolved there and the default command would refuse them.
    """
    from keras_glacier.data.sources import TIFF
    from keras_glacier.training.config import defaults

    if source.kind == TIFF and spec == defaults()["bands"]:
        spec = None  # select_bands: all band folders, in order
    selection = source.select_bands(spec)
    return tuple(int(i) for i in selection.indices), list(selection.names)


def demo_data_dir(run_dir: Path, part: bool) -> Path:
    """Where a run's demo data lives: its own folder's ``demo_data``, shared by all parts of a run of
    several (``part``: a fold or member, one level down) and by a refit's validated run, which is the
    run folder's ``validation-run`` (so ``RUN/member-1/validation-run`` uses ``RUN/demo_data``)."""
    top = Path(run_dir)
    top = top.parent if top.name == VALIDATION_RUN else top
    return (top.parent if part else top) / "demo_data"


def prepare_data(config: TrainConfig, run_dir: Path, resume: bool, fold: tuple[int, int] | None = None,
                 member: tuple[int, int] | None = None):
    """Find the samples, split them by scene, and compute (or on resume reload) the statistics.

    ``fold`` (index, count) and ``member`` (index, the ensemble's seed) name one part of a run of
    several (``--folds``, ``--members``): its demo data is the parent run's, and an ensemble's
    members split the scenes (and make the demo data) with the ensemble's seed, not their own, so
    every member holds out the same validation tiles. A ``--refit`` run's validated run keeps its
    demo data in the run folder above it (:func:`demo_data_dir`).

    With several processes every process computes the same split and statistics (both are
    deterministic from the files and the seed) and only process 0 writes split.json and stats.json;
    the demo data is written by process 0, and by another process only where it cannot see it (a
    host without the shared run folder: same seed, same files).
    """
    from keras_glacier.data.demo import make_demo_band_folders, make_demo_dataset
    from keras_glacier.data.labels import label_summary
    from keras_glacier.data.sources import discover
    from keras_glacier.data.split import load_split, save_split, split_by_scene
    from keras_glacier.data.stats import BandStats, compute_stats
    from keras_glacier.training import parallel

    chief = parallel.is_chief()
    split_seed = config.seed if member is None else member[1]
    if config.data is None:
        demo_dir = demo_data_dir(run_dir, part=fold is not None or member is not None)
        tiles_per_scene = 4
        scenes = max(2, -(-config.demo_tiles // tiles_per_scene))
        first_part = (fold is None or fold[0] == 0) and (member is None or member[0] == 0)
        if chief and not resume and first_part:  # a previous run may have used other settings
            shutil.rmtree(demo_dir, ignore_errors=True)
        if not chief:
            parallel.barrier("demo data written")
        if config.task == "multiclass":
            # Phase 2's four classes (lakes included) exist only in band-folder labels: HKH masks have
            # no lake channel, so the multi-class demo is written as GlacierHack band folders.
            if not (demo_dir / "label").is_dir():
                make_demo_band_folders(demo_dir, tiles=scenes * tiles_per_scene, size=config.demo_size,
                                       seed=split_seed, scenes=scenes, task="multiclass")
        elif not any(demo_dir.glob("slice_*_mask_*.npy")):
            make_demo_dataset(demo_dir, scenes=scenes, tiles_per_scene=tiles_per_scene, size=config.demo_size,
                              seed=split_seed)
        if chief:
            parallel.barrier("demo data written")
        root = demo_dir
    else:
        root = Path(config.data)
    source = discover(root, task=config.task, mask_layout=config.mask_layout)
    if not source.has_labels:
        missing = next(s for s in source.samples if s.label_path is None)
        raise InputError(f"{missing.image_paths[0]}: no label for this tile; training needs a label/ folder")
    bands, band_names = resolve_bands(source, config.bands)
    if resume:
        train, val = load_split(run_dir / "split.json", source.samples)
        stats = BandStats.load(run_dir / "stats.json")
    else:
        if fold is None and config.val_scenes is not None:
            train, val = chosen_split(source.samples, config.val_scenes, root)
        elif fold is None:
            train, val = split_by_scene(source.samples, config.val_fraction, split_seed)
        else:
            train, val = fold_split(source.samples, *fold, seed=split_seed)
        if not val and config.validates:
            raise InputError(f"{root}: only one scene ({train[0].scene_id}), so no scene is left for validation; "
                             "add scenes or tiles from other scenes")
        extra = {} if fold is None else {"fold": fold[0] + 1, "folds": fold[1]}
        if chief:
            save_split(run_dir / "split.json", train, val, seed=split_seed, val_fraction=config.val_fraction,
                       data=str(root), **extra)
        stats = compute_stats(train, bands, seed=config.seed, band_names=band_names)
        if chief:
            stats.save(run_dir / "stats.json")
    summary = label_summary(train, bands, source.class_names, source.mask_layout)
    print(summary.line(), flush=True)
    summary.require_glacier()
    return source, bands, band_names, train, val, stats, summary


def chosen_split(samples, val_scenes: str, root):
    """(train, val) with exactly the scenes of ``--val-scenes`` held out; unknown scenes are refused."""
    from keras_glacier.training.config import scene_list

    wanted = scene_list(val_scenes)
    available = sorted({s.scene_id for s in samples})
    missing = [scene for scene in wanted if scene not in available]
    if missing:
        raise UsageError(f"--val-scenes: no scene {', '.join(missing)} in {root}; "
                         f"available scenes: {', '.join(available)}")
    if set(wanted) == set(available):
        raise UsageError(f"--val-scenes {val_scenes}: that is every scene in {root}, none is left for training")
    return [s for s in samples if s.scene_id not in wanted], [s for s in samples if s.scene_id in wanted]


def fold_split(samples, fold: int, folds: int, seed: int = 0):
    """(train, val) of fold ``fold`` of ``folds``: the scenes, shuffled by ``seed``, dealt round-robin."""
    scenes = sorted({s.scene_id for s in samples})
    if len(scenes) < folds:
        raise UsageError(f"--folds {folds}: the data has only {len(scenes)} scenes; each fold needs its own")
    order = [scenes[i] for i in np.random.default_rng(seed).permutation(len(scenes))]
    held = set(order[fold::folds])
    return [s for s in samples if s.scene_id not in held], [s for s in samples if s.scene_id in held]


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def effective_crop(requested: int | None, shapes) -> int | None:
    """The crop the loader should use for tiles of ``shapes`` (every tile's (height, width)).

    With a requested crop and a tile longer than it on either side, the crop: larger tiles are cropped
    (randomly in training) and smaller ones padded up to it. Otherwise every tile is used whole, padded
    up to the longest side of them all (a multiple of the output stride), with NaN bands and ignored
    labels, so that no real pixel is dropped and none is invented; None when every tile already is that
    square. All the shapes count, not the first tile's: a crop decided by one tile cut the larger tiles
    of a validation set down to their centres, and made a 160 x 480 first tile turn ``--crop 160`` into
    480 x 480 crops.
    """
    from keras_glacier.constants import OUTPUT_STRIDE

    shapes = [tuple(shape) for shape in shapes]
    if not shapes:  # no tiles: nothing to decide from
        return requested
    longest = max(max(shape) for shape in shapes)
    if requested is not None and longest > requested:
        return requested
    side = ceil_to(longest, OUTPUT_STRIDE)
    return None if all(shape == (side, side) for shape in shapes) else side


def tile_shapes(samples) -> list[tuple[int, int]]:
    """Every sample's (height, width), read from its file's header."""
    from keras_glacier.data.sampling import tile_shape

    return [tile_shape(sample) for sample in samples]


def encoder_for(config: TrainConfig, num_train_tiles: int) -> str:
    """The encoder a run builds: ``--encoder``, with auto decided by the training tile count."""
    from keras_glacier.data.sampling import auto_encoder

    return auto_encoder(num_train_tiles, config.batch_size) if config.encoder == AUTO else config.encoder


def make_datasets(config: TrainConfig, run_dir: Path, train, val, stats, bands):
    """(training, validation) datasets; the training epoch is ``samples_per_epoch`` sampled crops.

    ``batch_size`` is the global batch (over all processes and devices): each process wraps these
    whole-job sequences in ``distribution.ProcessShard`` to read its share.
    """
    from keras_glacier.data.dataset import GlacierSequence

    train_seq = training_sequence(config, run_dir, train, stats, bands)
    val_seq = GlacierSequence(
        val, batch_size=config.batch_size, crop=effective_crop(None, tile_shapes(val)), augment=None,
        shuffle=False, seed=config.seed, **loader_settings(config, run_dir, stats, bands))
    return train_seq, val_seq


def statistics_sequence(config: TrainConfig, run_dir: Path, tiles, stats, bands, batch_size: int):
    """Whole training tiles, un-augmented, in order: what ``--bn-stats tiles`` measures the network on.

    Read from their files, as inference reads them, not from the run's tile cache (a subset of the
    training tiles would be a cache of its own)."""
    from keras_glacier.data.dataset import GlacierSequence

    settings = {**loader_settings(config, run_dir, stats, bands), "cache_dir": None}
    return GlacierSequence(tiles, batch_size=batch_size, crop=effective_crop(None, tile_shapes(tiles)),
                           augment=None, shuffle=False, seed=config.seed, **settings)


def loader_settings(config: TrainConfig, run_dir: Path, stats, bands) -> dict:
    """What the training and the validation sequences share: statistics, bands, threads, cache."""
    from keras_glacier.training.parallel import cache_folder

    return dict(stats=stats, bands=bands, workers=config.workers,
                cache_dir=cache_folder(run_dir) if config.cache else None)


def training_sequence(config: TrainConfig, run_dir: Path, train, stats, bands):
    """The training dataset: ``samples_per_epoch`` augmented crops drawn in proportion to tile area."""
    from keras_glacier.data.augment import AugmentConfig
    from keras_glacier.data.dataset import GlacierSequence
    from keras_glacier.data.sampling import default_samples_per_epoch

    shapes = tile_shapes(train)
    crop = effective_crop(config.crop, shapes)
    samples = config.samples_per_epoch or default_samples_per_epoch(
        shapes, crop, config.batch_size, encoder_for(config, len(train)))
    augment = AugmentConfig(affine=resolved_affine(config, len(train))) if config.augment else None
    return GlacierSequence(
        train, batch_size=config.batch_size, crop=crop, augment=augment,
        shuffle=True, seed=config.seed, samples_per_epoch=samples, **loader_settings(config, run_dir, stats, bands))


def resolved_affine(config: TrainConfig, num_train_tiles: int) -> float:
    """``--affine``, with auto decided by the training tile count."""
    from keras_glacier.data.sampling import auto_affine

    return auto_affine(num_train_tiles, config.batch_size) if config.affine == AUTO else config.affine
