"""``--refit``: once validation has chosen the epoch and the threshold, train again on every labelled tile.

Why: with a dozen labelled tiles, holding three out for validation costs the network a quarter of
what it could learn from (on everest-west the third training row was worth as much MCC as the whole
choice of epoch and threshold: benchmarks/RESULTS.md). Validation is still needed to choose when to
stop and where to threshold, so the run is made twice: first the ordinary run, kept whole in
``RUN_DIR/validation-run`` (its history, figures, model and scores), then a fresh network trained
on its training and validation tiles together for the epochs that run's best model had trained
(at least three quarters of ``--epochs`` unless ``--refit-epochs`` says otherwise: :func:`refit_epoch_count`),
with the same seed, epoch size, encoder and augmentation.

Its learning-rate schedule is its own: the warm-up and the cosine span the refit's epochs, so it
ends annealed. The validated run's best epoch was picked, among weights still moving at a high
learning rate when early stopping came early, as the one that happened to validate best; the refit
has nothing to pick on, and stopping the same schedule at the same epoch draws another such weight
set blindly (on everest-west the short refits then lost what the third row gave; annealed, they
kept it: benchmarks/RESULTS.md).

The refitted network is the run's ``model.keras`` and ``model.pth``. A binary one decides at 0.5
(or ``--threshold``), not at the threshold validation chose (:func:`refit_threshold` says why).
Nothing is left to score it on honestly, so the run's ``metrics.json`` holds the validated run's
scores, marked with ``refit_epochs`` (:func:`refit_metrics`); the band statistics are recomputed
over all the tiles it learns from, and ``split.json`` lists them all as training tiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_glacier.errors import InputError
from keras_glacier.fileio import write_json
from keras_glacier.training.config import AUTO, BEST, TrainConfig
from keras_glacier.training.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    VALIDATION_RUN,
    RunResult,
    finished_run,
    print_table,
    read_run_facts,
    write_run_facts,
)
from keras_glacier.training.unvalidated import UNVALIDATED_THRESHOLD, fit_blind


def validation_run_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / VALIDATION_RUN


def best_epoch(history_csv: Path, monitor: str = "val_mcc") -> int:
    """The 1-based epoch whose model the validated run kept: the first with the best ``monitor``.

    The first, because the checkpoint and early stopping keep an epoch only when it is strictly better.
    """
    from keras_glacier.callbacks import read_history

    history = read_history(history_csv) or {}
    values = [v if v == v else -np.inf for v in history.get(monitor, [])]  # NaN never wins
    if not values or max(values) == -np.inf:
        raise InputError(f"{history_csv}: no {monitor} in the validated run's history, so the epochs to refit for "
                         "are unknown")
    index = int(np.argmax(values))
    epochs = history.get("epoch")
    return int(epochs[index]) + 1 if epochs and len(epochs) == len(values) else index + 1


#: ``--refit-epochs auto``: the refit trains at least this fraction of ``--epochs``.
REFIT_EPOCH_FLOOR = 0.75


def refit_epoch_count(config: TrainConfig, best: int) -> int:
    """How many epochs the refit trains, given the validated run's best epoch (``--refit-epochs``).

    ``auto``: the best epoch, but at least three quarters of ``--epochs``. Why a floor: with a few
    validation tiles the validation MCC swings by tenths from one epoch to the next, so a best epoch
    found early (7 of 40, after which patience ended the run) says less about when the network has
    learned than about one lucky epoch, and the plain run kept that epoch's weights because they
    validated well, which the refit cannot check. On everest-west rows never seen, refits of 7-10
    epochs lost to the plain run on the row where they were shortest; given at least 20 epochs the
    seven refits that changed raised the mean of twelve by 0.018, given at least 30 the eight that
    changed gained on 6 and raised it by 0.033 (benchmarks/RESULTS.md). A best epoch past the floor
    is kept as it is.
    """
    if config.refit_epochs == BEST:
        return best
    if config.refit_epochs == AUTO:
        return max(best, math.ceil(config.epochs * REFIT_EPOCH_FLOOR))
    return int(config.refit_epochs)


#: A refitted binary network's decision threshold under ``--threshold auto``.
REFIT_THRESHOLD = UNVALIDATED_THRESHOLD


def epoch_reason(config: TrainConfig, best: int, epochs: int) -> str:
    """Why the refit trains ``epochs`` epochs, for its log line."""
    if epochs == best:
        return "the validated run's best"
    if config.refit_epochs == AUTO:
        return f"the validated run's best was {best}; --refit-epochs auto trains at least three quarters of --epochs"
    return f"--refit-epochs; the validated run's best was {best}"


def refit_threshold(config: TrainConfig, validated_threshold: float | None) -> float | None:
    """The refitted network's decision threshold: ``--threshold`` when given, else 0.5; None (the most
    probable class) for a multi-class run, whose validated run has no threshold.

    Not the one validation chose: that was chosen for another network (the refit trains on more
    tiles and anneals over other epochs), on validation tiles that are few and often one scene, where
    the best threshold follows that scene's glacier share (0.2 for a row with 22% glacier, 0.7 for one
    with 63%), which new ground does not share. On everest-west rows never seen, 0.5 scored higher
    than the validated threshold for 11 of 12 refitted networks and for every ensemble of them
    (benchmarks/RESULTS.md).
    """
    if validated_threshold is None:
        return None
    return REFIT_THRESHOLD if config.threshold == AUTO else float(config.threshold)


def refit_metrics(validated_metrics: dict, threshold: float | None, epochs, tiles: int) -> dict:
    """A refit run's metrics.json: the validated scores, with ``threshold`` the refit's decision
    threshold (the one its model uses) and ``validated_threshold`` the one validation chose."""
    metrics = dict(validated_metrics)
    if threshold is not None and "threshold" in metrics:
        metrics["validated_threshold"] = metrics["threshold"]
        metrics["threshold"] = float(threshold)
    return {**metrics, "refit_epochs": epochs, "refit_tiles": tiles}


def refit_settings(config: TrainConfig, validated: RunResult, facts: dict, train_tiles: int,
                   epochs: int) -> TrainConfig:
    """The settings of the refit: the validated run's, for ``epochs`` (the schedule's length too),
    with what it resolved from its tile count fixed.

    ``auto`` choices that follow the number of training tiles (encoder, epoch size, affine
    augmentation) would change with the validation tiles added; they are pinned to the validated
    run's so that the refit trains the network that validation judged.
    """
    from keras_glacier.training.data import resolved_affine

    threshold = refit_threshold(config, validated.threshold)
    return dataclasses.replace(config, refit=False, epochs=epochs, encoder=facts["encoder"],
                               samples_per_epoch=int(facts["samples_per_epoch"]),
                               affine=resolved_affine(config, train_tiles),
                               threshold=AUTO if threshold is None else float(threshold))


def train_refit(config: TrainConfig, run_dir: Path, resume: bool, callbacks: Sequence = (),
                member: tuple[int, int] | None = None) -> RunResult:
    """The validated run (or on resume the one already finished), then the refit into ``run_dir``.

    ``member`` (index, the ensemble's seed): ``run_dir`` is that member of a ``--members`` run (see
    :func:`keras_glacier.training.data.prepare_data`).
    """
    from keras_glacier.training.fit import train_one

    done = finished_run(run_dir, config) if resume else None
    if done is not None and "refit_epochs" in done.metrics:
        print(f"refit: the run in {run_dir} finished before (its refitted network trained "
              f"{done.metrics['refit_epochs']} epochs)", flush=True)
        return done
    validated_dir = validation_run_dir(run_dir)
    first = dataclasses.replace(config, refit=False, export=False, out=str(validated_dir))
    validated = finished_run(validated_dir, first) if resume else None
    if validated is None:
        again = resume and (validated_dir / CONFIG_FILE).is_file()
        validated = train_one(first, validated_dir, again, callbacks, member=member)
    else:
        print(f"refit: the validated run in {validated_dir} finished before", flush=True)
    return refit(config, run_dir, validated, resume, callbacks, member)


def refit(config: TrainConfig, run_dir: Path, validated: RunResult, resume: bool = False,
          callbacks: Sequence = (), member: tuple[int, int] | None = None) -> RunResult:
    """Train a fresh network on all of ``validated``'s tiles for its best epoch count; save and export it."""
    from keras_glacier.data.labels import label_summary
    from keras_glacier.data.split import save_split
    from keras_glacier.data.stats import BandStats, compute_stats
    from keras_glacier.training.data import prepare_data, training_sequence
    from keras_glacier.training.fit import export_run, set_up_devices

    validated_dir = validated.run_dir
    best = best_epoch(validated_dir / "history.csv")
    epochs = refit_epoch_count(config, best)
    facts = read_run_facts(validated_dir)
    source, bands, band_names, train, val, _, _ = prepare_data(
        TrainConfig.from_run(validated_dir), validated_dir, resume=True, member=member)
    settings = refit_settings(config, validated, facts, len(train), epochs)
    tiles = [*train, *val]
    devices, precision = set_up_devices(settings)
    if resume and (run_dir / "stats.json").is_file():
        stats = BandStats.load(run_dir / "stats.json")
    else:
        stats = compute_stats(tiles, bands, seed=settings.seed, band_names=band_names)
        stats.save(run_dir / "stats.json")
        save_split(run_dir / "split.json", tiles, [], seed=settings.seed, data=str(source.root),
                   refit_of=VALIDATION_RUN)
    summary = label_summary(tiles, bands, source.class_names, source.mask_layout)
    train_seq = training_sequence(settings, run_dir, tiles, stats, bands)
    threshold = None if settings.threshold == AUTO else float(settings.threshold)
    own = dict(devices=devices, precision=precision, refit_epochs=epochs, refit_tiles=len(tiles),
               validated_run=VALIDATION_RUN, **({} if threshold is None else {"threshold": threshold}))
    write_run_facts(run_dir, **{**{k: v for k, v in facts.items() if k != "threshold"}, **own})
    decision = ("most probable class" if threshold is None else f"threshold {threshold:.3f} "
                + (f"(the validated run's {validated.threshold:.3f} was chosen for its own network)"
                   if config.threshold == AUTO else "(--threshold)"))
    print(f"refit: training again on all {len(tiles)} labelled tiles ({len(train)} training + {len(val)} validation) "
          f"for {epochs} epochs ({epoch_reason(config, best, epochs)}) of {train_seq.samples_per_epoch} crops, "
          f"{decision}, run folder {run_dir}", flush=True)

    model = fit_blind(settings, run_dir, train_seq, stats, bands, band_names, source, summary, settings.encoder,
                      threshold, resume, callbacks)
    metrics = refit_metrics(validated.metrics, threshold, epochs, len(tiles))
    write_json(run_dir / METRICS_FILE, metrics)
    print_table(f"validated run's scores ({len(val)} validation tiles; the refitted network has seen them)",
                {k: v for k, v in metrics.items() if isinstance(v, float)})
    result = RunResult(run_dir, config, metrics, model=run_dir / "model.keras", threshold=threshold)
    result.validated = validated
    return export_run(config, result, model)


__all__ = ["REFIT_THRESHOLD", "VALIDATION_RUN", "best_epoch", "refit", "refit_metrics", "refit_settings",
           "refit_threshold", "train_refit", "validation_run_dir"]
