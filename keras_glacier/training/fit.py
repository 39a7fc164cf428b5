"""The training job: data, model, fit, best epoch, decision threshold, export.

:func:`train` is the whole job for a :class:`TrainConfig` (the command line is a thin layer over
it); the steps are separate functions so that tests and notebooks can reach each one.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.errors import UsageError
from keras_glacier.fileio import save_keras_model, write_json
from keras_glacier.training import parallel
from keras_glacier.training.batchnorm import recompute_for_run
from keras_glacier.training.config import AUTO, TrainConfig
from keras_glacier.training.data import (
    effective_crop,
    encoder_for,
    fold_split,
    make_datasets,
    prepare_data,
    resolve_bands,
)
from keras_glacier.training.optimizer import make_optimizer
from keras_glacier.training.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RunResult,
    check_resumed_config,
    choose_run_dir,
    print_table,
    read_run_facts,
    write_run_facts,
)
from keras_glacier.training.threshold import choose_threshold

#: Metrics of the binary task, as Keras logs them (validation: ``val_`` + name).
BINARY_METRICS = ("mcc", "iou", "f1", "precision", "recall", "r2", "loss")
#: What checkpointing and early stopping follow: the validation MCC, larger is better.
MONITOR, MONITOR_MODE = "val_mcc", "max"


# ------------------------------------------------------------------------------------ devices
def resolve_precision(precision: str) -> str:
    """``auto``: float32 on CPU (mixed precision is slower there), bfloat16 where every chip has it."""
    if precision != AUTO:
        return precision
    from keras_glacier.accelerator import auto_precision

    return auto_precision()[0]


def set_up_devices(config: TrainConfig) -> tuple[int, str]:
    """Applies the precision policy, the seeds (on every process) and the data-parallel mesh (several
    processes, or ``--distribute data_parallel``); returns (devices in use, precision policy)."""
    import keras

    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    return parallel.set_up(config), precision


# -------------------------------------------------------------------------------------- model
def pretrained_file(spec: str, encoder: str) -> str:
    """A ``--pretrained`` value as a file: a path stays, ``imagenet`` is ``encoder``'s, fetched (convert.pretrained)."""
    from convert.pretrained import resolve_pretrained

    return str(resolve_pretrained(spec, encoder))


def rotation_note(train_seq) -> str:
    """", free rotation and zoom p=0.7" when the training crops get them (``--affine``), else nothing."""
    augmenter = train_seq.augmenter
    affine = augmenter.config.affine if augmenter is not None else 0.0
    return f", free rotation and zoom p={affine:g}" if affine > 0 else ""


def build_model(config: TrainConfig, stats, num_bands: int, band_names: Sequence[str] | None = None,
                classes: Sequence[str] | None = None, class_values: Sequence[int] | None = None,
                encoder: str | None = None):
    """The network for ``config``: a GlacierDeepLab that carries its bands, classes and statistics.

    ``encoder``: what ``--encoder auto`` resolved to for the run's data (:func:`encoder_for`); None
    takes ``config.encoder``, which then must name one (ResNet-34 for auto).
    """
    from keras_glacier.constants import DEFAULT_ENCODER
    from keras_glacier.model import GlacierDeepLab
    from keras_glacier.training.config import AUTO, aspp_rates

    encoder = encoder or (DEFAULT_ENCODER if config.encoder == AUTO else config.encoder)
    model = GlacierDeepLab(num_bands=num_bands, band_names=band_names, task=config.task, encoder=encoder,
                           aspp_rates=aspp_rates(config.aspp_rates),
                           class_names=None if classes is None else list(classes),
                           class_values=None if class_values is None else list(class_values),
                           stats=stats.to_dict())
    if config.pretrained is not None:
        from convert import load_torchvision_resnet

        load_torchvision_resnet(pretrained_file(config.pretrained, encoder), model)
    return model


def build_loss(config: TrainConfig, num_classes: int = 2, class_weights: Sequence[float] | None = None):
    """The ``--loss`` for the task (keras_glacier.losses); a refused combination is the user's mistake."""
    from keras_glacier import losses

    alpha = config.alpha if config.loss == "bce_dice" else None
    try:
        return losses.make_loss(config.loss, task=config.task, num_classes=num_classes, alpha=alpha,
                                class_weights=class_weights)
    except ValueError as exc:
        raise UsageError(f"--loss {config.loss}: {exc}") from None


def build_metrics(config: TrainConfig, class_names: Sequence[str]):
    """Whole-set confusion-matrix metrics; both tasks log ``mcc`` first, which early stopping follows."""
    from keras_glacier import metrics

    return metrics.segmentation_metrics(task=config.task, class_names=list(class_names))


def class_weights_for(config: TrainConfig, summary) -> list[float] | None:
    """``--class-weights auto``: inverse square root of the training split's class frequencies."""
    if config.class_weights != "auto":
        return None
    from keras_glacier.losses import auto_class_weights

    return auto_class_weights(summary.counts)


def compile_model(model, config: TrainConfig, steps_per_epoch: int,
                  class_names: Sequence[str] = ("background", "glacier"),
                  class_weights: Sequence[float] | None = None) -> None:
    model.compile(optimizer=make_optimizer(config, steps_per_epoch),
                  loss=build_loss(config, len(class_names), class_weights),
                  metrics=build_metrics(config, class_names), jit_compile=True)


# ---------------------------------------------------------------------------------- callbacks
def best_so_far(csv_path: Path, key: str = MONITOR) -> float | None:
    """Best value of ``key`` in a CSV log, so a resumed run does not overwrite a better best.keras."""
    from keras_glacier.callbacks import read_history

    values = [v for v in (read_history(csv_path) or {}).get(key, []) if v == v]  # drop NaN
    return max(values) if values else None


def make_callbacks(config: TrainConfig, run_dir: Path, train_seq, val_seq, stats, resume: bool,
                   class_names: Sequence[str] = ("background", "glacier")):
    import keras

    from keras_glacier.callbacks import AveragedWeights, FigureWriter, StopOnNonFiniteLoss
    from keras_glacier.data.dataset import EpochSync

    preview = [val_seq.load(i) for i in range(min(3, len(val_seq.samples)))]
    csv_log = run_dir / "history.csv"
    best = best_so_far(csv_log) if resume else None
    # Under a distribution the writers run on process 0 only, from a local copy of the model;
    # EarlyStopping and the backup run on every process (they change what every process does).
    writer = parallel.chief_only
    # With a weight average, validation and the callbacks after AveragedWeights see the averaged
    # weights; the backup before it keeps the raw ones that training continues from.
    average = [AveragedWeights()] if config.ema > 0 else []
    return [
        StopOnNonFiniteLoss(config.lr),
        EpochSync(train_seq, val_seq),
        parallel.backup_and_restore(run_dir / "backup"),
        *average,
        writer(keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=MONITOR, mode=MONITOR_MODE,
                                               save_best_only=True, initial_value_threshold=best)),
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode=MONITOR_MODE, patience=config.patience,
                                      restore_best_weights=True),
        writer(keras.callbacks.CSVLogger(str(csv_log), append=resume)),
        writer(FigureWriter(run_dir, np.stack([p[0] for p in preview]), np.stack([p[1] for p in preview]),
                            stats.lo, stats.hi, csv_log=csv_log,
                            class_names=list(class_names) if config.task == "multiclass" else None)),
    ]


# ------------------------------------------------------------------------------ run facts, log
def data_facts(config: TrainConfig, source, bands, band_names, summary, train_seq, encoder: str, devices: int,
               precision: str, member: tuple[int, int] | None = None) -> dict:
    """What run.json records of a run's data and set-up (keras_glacier.training.run_folder)."""
    import keras

    return dict(bands_used=[int(b) for b in bands], band_names=list(band_names),
                class_names=list(source.class_names), class_values=[int(v) for v in source.class_values],
                mask_layout=source.mask_layout, label_fractions=summary.fractions(),
                data_kind=source.kind, data=str(source.root), devices=devices, precision=precision,
                samples_per_epoch=train_seq.samples_per_epoch, steps_per_epoch=len(train_seq), encoder=encoder,
                keras_version=keras.__version__, backend=keras.backend.backend(),
                **({} if member is None else {"member": member[0] + 1, "seed": config.seed}))


def print_data_line(source, train_tiles, val, band_names, train_seq, run_dir: Path) -> None:
    tile = tuple(train_seq.load(0)[0].shape[:2])
    print(f"data: {source.kind} at {source.root}: {len(train_tiles)} training and {len(val)} validation tiles "
          f"({len({s.scene_id for s in train_tiles})} / {len({s.scene_id for s in val})} scenes), bands "
          f"{list(band_names)}, crops {tile[0]}x{tile[1]}, {train_seq.samples_per_epoch} per epoch "
          f"({len(train_seq)} steps){rotation_note(train_seq)}, run folder {run_dir}", flush=True)


def print_model_line(model, encoder: str, precision: str, devices: int) -> None:
    import keras

    params = model.count_params()
    print(f"model: {model.name} ({encoder}), {params / 1e6:.2f}M parameters ({params * 4 / 1e6:.1f} MB as float32), "
          f"precision {precision}, {devices} device(s), backend {keras.backend.backend()}", flush=True)


# ----------------------------------------------------------------------------------------- job
def train(config: TrainConfig | None = None, *, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence = (), **settings) -> RunResult:
    """Train a model as ``config`` says; returns the run folder, metrics and threshold.

    ``keras_glacier.train(TrainConfig(epochs=20))`` or ``keras_glacier.train(epochs=20)``. With
    ``resume=True`` the run in ``config.out`` continues from its last completed epoch; its saved
    settings must match (only ``epochs`` and ``workers`` may change: take the config from
    ``TrainConfig.from_run(out)``). ``overwrite=True`` replaces a run already in ``config.out``.
    ``callbacks`` are extra Keras callbacks (after the run's own).

    Several processes (machines): call ``keras_glacier.distribution.initialize(coordinator,
    num_processes, process_id)`` on each first, before anything touches a jax device, then
    ``train(config)`` with the same config on each. Every process trains on its share of each global
    ``batch_size`` batch over one data-parallel mesh of all devices; process 0 alone writes the run
    folder and returns the full result, the others return the validation scores only.
    """
    config = TrainConfig(**settings) if config is None else dataclasses.replace(config, **settings)
    config.check_paths()
    run_dir = choose_run_dir(config, resume, overwrite)
    if resume:
        check_resumed_config(run_dir, config)
    if config.folds == 1 and config.members == 1 and not config.refit and config.validates:
        return train_one(config, run_dir, resume, callbacks, advise=True)
    if parallel.process_count() > 1:
        flag = (f"--folds {config.folds}" if config.folds > 1 else f"--members {config.members}" if config.members > 1
                else "--refit" if config.refit else "--val-fraction 0")
        raise UsageError(f"{flag}: this run trains in one process only; train with validation (and without "
                         "--folds, --members and --refit) across processes")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())  # first, so that an interrupted run of several resumes
    if config.members > 1:  # with --refit too: every member is refitted
        from keras_glacier.training.members import train_members

        return train_members(config, run_dir, resume, callbacks)
    if config.refit:
        from keras_glacier.training.refit import train_refit

        return train_refit(config, run_dir, resume, callbacks)
    if not config.validates:
        from keras_glacier.training.unvalidated import train_unvalidated

        return train_unvalidated(config, run_dir, resume, callbacks)
    results = []
    for fold in range(config.folds):
        fold_dir = run_dir / f"fold-{fold + 1}"
        again = resume and (fold_dir / CONFIG_FILE).is_file()
        results.append(train_one(config, fold_dir, again, callbacks, fold=(fold, config.folds)))
    keys = [k for k in results[0].metrics if all(isinstance(r.metrics.get(k), float) for r in results)]
    mean = {k: float(np.mean([r.metrics[k] for r in results])) for k in keys}
    write_json(run_dir / METRICS_FILE, {"mean": mean, "folds": [r.metrics for r in results]})
    print_table(f"validation, mean of {config.folds} folds", mean)
    return RunResult(run_dir, config, mean, folds=results)


def train_one(config: TrainConfig, run_dir: Path, resume: bool, extra_callbacks: Sequence = (),
              fold: tuple[int, int] | None = None, member: tuple[int, int] | None = None,
              advise: bool = False) -> RunResult:
    """One run (one fold, one member) into ``run_dir``. Every process runs it; only process 0 writes files.

    ``fold`` and ``member``: see :func:`keras_glacier.training.data.prepare_data`; a member's
    ``config`` is already its own (its seed, ``out``), as :mod:`keras_glacier.training.members` makes it.
    ``advise``: the run is the whole job (no folds, members or refit), so it ends with
    :func:`few_tiles_advice` where that applies.
    """
    from keras_glacier.callbacks import FigureWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    devices, precision = set_up_devices(config)
    chief, processes = parallel.is_chief(), parallel.process_count()
    source, bands, band_names, train_tiles, val, stats, summary = prepare_data(config, run_dir, resume, fold, member)
    if processes > 1:
        parallel.check_same_tiles(train_tiles)
    # A fold's folder is a run of its own (its split.json holds the fold): resuming it trains that fold only.
    saved = config if fold is None else dataclasses.replace(config, folds=1, out=str(run_dir))
    if chief:
        write_json(run_dir / CONFIG_FILE, saved.to_dict())
    classes = list(source.class_names)
    weights = class_weights_for(config, summary)
    train_seq, val_seq = make_datasets(config, run_dir, train_tiles, val, stats, bands)
    encoder = encoder_for(config, len(train_tiles))
    if chief:
        write_run_facts(run_dir, **data_facts(config, source, bands, band_names, summary, train_seq, encoder,
                                              devices, precision, member),
                        **({} if processes == 1 else {"processes": processes}),
                        **({} if fold is None else {"fold": fold[0] + 1, "folds": fold[1]}))
    print_data_line(source, train_tiles, val, band_names, train_seq, run_dir)

    model = build_model(config, stats, len(bands), band_names, classes, source.class_values, encoder)
    print_model_line(model, encoder, precision, devices)
    compile_model(model, config, len(train_seq), classes, weights)
    callbacks = [*make_callbacks(config, run_dir, train_seq, val_seq, stats, resume, classes), *extra_callbacks,
                 *parallel.step_callbacks()]
    model.fit(parallel.shard(train_seq), validation_data=parallel.shard(val_seq), epochs=config.epochs,
              callbacks=callbacks, shuffle=False, verbose=(2 if not sys.stdout.isatty() else "auto") if chief else 0)

    parallel.load_best(model, run_dir / "best.keras")
    recompute_for_run(config, run_dir, model, train_tiles, stats, bands)
    # Every process evaluates its share; the confusion counts are summed over all of them.
    scores = model.evaluate(parallel.shard(val_seq), verbose=0, return_dict=True, callbacks=parallel.step_callbacks())
    # Binary scores in their usual order; a multi-class run adds mean_iou and iou_<class> for every class.
    metrics = {key: float(scores[key]) for key in BINARY_METRICS if key in scores}
    metrics.update({key: float(value) for key, value in scores.items() if key not in metrics})
    if not chief:  # the threshold, the model files and the figures are process 0's
        return RunResult(run_dir, config, metrics)
    figures = next(c for c in callbacks if isinstance(parallel.unwrap(c), FigureWriter))
    model, writing = parallel.chief_model(model, figures)
    with writing:
        result = finish_run(config, run_dir, model, val_seq, metrics, len(val), parallel.unwrap(figures))
    advice = few_tiles_advice(config, len(train_tiles), len(val)) if advise else None
    if advice:
        print(advice, flush=True)
    return result


def few_tiles_advice(config: TrainConfig, train_tiles: int, val_tiles: int) -> str | None:
    """The closing line of a validated run on few tiles (:func:`keras_glacier.data.sampling.small_dataset`).

    Why: there, the held-out scenes are a large share of what there is to learn from, so the validated
    network is the weaker one. Its scores measure the recipe; the network to use learns from every
    labelled tile. On everest-west's rows never seen, one network of ``--val-fraction 0 --epochs 45``
    scored well above the validated default's, and ensembles of it higher still (benchmarks/RESULTS.md:
    "BatchNorm statistics recomputed", "45 epochs without validation"). None where it does not apply.
    """
    from keras_glacier.data.sampling import small_dataset

    if not small_dataset(train_tiles, config.batch_size):
        return None
    return (f"few tiles: these scores measure the recipe on {val_tiles} held-out tiles; for the model to use, "
            f"train on all {train_tiles + val_tiles} labelled tiles with --val-fraction 0 --epochs 45 (best with "
            "--members 2 or more), which did better on ground never seen (README, Training: No validation)")


def finish_run(config: TrainConfig, run_dir: Path, model, val_seq, metrics: dict, val_tiles: int,
               figures, what: str = "best epoch's model") -> RunResult:
    """Process 0: the decision threshold, model.keras, metrics.json, the figures (None: none) and the export."""
    threshold = None
    if config.task == "binary":
        from keras_glacier.inference import keras_forward

        threshold, threshold_mcc = choose_threshold(keras_forward(model), val_seq, config)
        threshold = min(max(threshold, 1e-6), 1.0 - 1e-6)  # a probability strictly inside (0, 1), as models need
        metrics.update(threshold=threshold, threshold_mcc=threshold_mcc)
        if hasattr(model, "threshold"):
            model.threshold = threshold  # saved with the model and carried into model.pth
        write_run_facts(run_dir, threshold=threshold)
    save_keras_model(model, run_dir / "model.keras")
    write_json(run_dir / METRICS_FILE, metrics)
    print_table(f"validation ({val_tiles} tiles, whole-set confusion matrix, {what})", metrics)
    if figures is not None:
        figures.set_model(model)
        figures.write_predictions()

    return export_run(config, RunResult(run_dir, config, metrics, model=run_dir / "model.keras", threshold=threshold),
                      model)


def export_run(config: TrainConfig, result: RunResult, model) -> RunResult:
    """Unless ``--no-export``: model.pth of ``model`` in the run folder, checked against it (convert)."""
    if config.export:
        from convert import convert_model

        result.conversion = convert_model(model, result.run_dir / "model.pth")
        print(result.conversion.summary())
        result.model_pth = result.run_dir / "model.pth"
    return result


__all__ = ["MONITOR", "MONITOR_MODE", "RunResult", "TrainConfig", "choose_threshold", "effective_crop", "fold_split",
           "make_datasets", "prepare_data", "read_run_facts", "resolve_bands", "train"]
