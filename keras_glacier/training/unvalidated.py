"""``--val-fraction 0``: every labelled tile trains, for a fixed schedule, and nothing validates.

Why: with a dozen labelled tiles a held-out scene is a quarter of what there is to learn from, and
validation on it mostly picks an epoch and a threshold from scores that swing by tenths between
epochs. ``--refit`` wins that quarter back but costs a second run, and on everest-west 9 of its 12
refits trained exactly the floor of 30 epochs (benchmarks/RESULTS.md): the validated run mostly
paid for a choice the floor then made. A run without validation trains the same network (every
tile, warm-up and cosine over ``--epochs``, the last epoch kept, decided at 0.5) in one run's time;
a schedule longer than the refit's floor pays there (45 epochs beat 30 for each of three seeds), so
the README's command trains 45.
What it gives up is any score: nothing is left to measure it on, so ``metrics.json`` holds the
last epoch's training-crop scores (``train_`` + name), which say whether it learned, not how well
it generalises, and an unlucky draw goes unnoticed (one of eight such runs there scored 0.37 on a
row where its refits scored 0.61). Measure a recipe with validation (or the accuracy benchmark)
first, then train the final networks with it, several of them (``--members N``).

:func:`fit_blind` is the training itself, shared with ``--refit``'s second network.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from keras_glacier.fileio import save_keras_model, write_json
from keras_glacier.training.config import AUTO, TrainConfig
from keras_glacier.training.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RunResult,
    finished_run,
    print_table,
    write_run_facts,
)

#: The decision threshold of a binary network no validation tiles chose one for (``--threshold auto``).
UNVALIDATED_THRESHOLD = 0.5


def unvalidated_threshold(config: TrainConfig) -> float | None:
    """``--threshold`` when given, else 0.5; None (the most probable class) for a multi-class run."""
    if config.task != "binary":
        return None
    return UNVALIDATED_THRESHOLD if config.threshold == AUTO else float(config.threshold)


def fit_blind(settings: TrainConfig, run_dir: Path, train_seq, stats, bands, band_names, source, summary,
              encoder: str, threshold: float | None, resume: bool = False, callbacks: Sequence = ()):
    """Build, train for ``settings.epochs`` on ``train_seq`` with no validation, and save model.keras.

    No checkpoint and no early stopping (nothing to follow): the backup lets an interrupted run
    resume, and the last epoch's network, annealed by the cosine, is the model.
    """
    import keras

    from keras_glacier.callbacks import AveragedWeights, StopOnNonFiniteLoss
    from keras_glacier.data.dataset import EpochSync
    from keras_glacier.training import parallel
    from keras_glacier.training.batchnorm import recompute_for_run
    from keras_glacier.training.fit import build_model, class_weights_for, compile_model

    model = build_model(settings, stats, len(bands), band_names, list(source.class_names), source.class_values,
                        encoder)
    compile_model(model, settings, len(train_seq), list(source.class_names), class_weights_for(settings, summary))
    fitting = [StopOnNonFiniteLoss(settings.lr), EpochSync(train_seq), parallel.backup_and_restore(run_dir / "backup"),
               *([AveragedWeights()] if settings.ema > 0 else []),
               keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume)]
    model.fit(train_seq, epochs=settings.epochs, callbacks=[*fitting, *callbacks, *parallel.step_callbacks()],
              shuffle=False, verbose=2 if not sys.stdout.isatty() else "auto")
    recompute_for_run(settings, run_dir, model, train_seq.samples, stats, bands)
    if threshold is not None and hasattr(model, "threshold"):
        model.threshold = threshold  # saved with the model and carried into model.pth
    save_keras_model(model, run_dir / "model.keras")
    return model


def last_epoch_scores(history_csv: Path) -> dict:
    """The last epoch's training scores from history.csv, as ``train_<name>`` (``val_`` columns are empty)."""
    from keras_glacier.callbacks import read_history

    history = read_history(history_csv) or {}
    last = {key: values[-1] for key, values in history.items()
            if values and key != "epoch" and not key.startswith("val_")}
    return {f"train_{key}": float(value) for key, value in last.items() if value == value}


def train_unvalidated(config: TrainConfig, run_dir: Path, resume: bool, callbacks: Sequence = (),
                      member: tuple[int, int] | None = None) -> RunResult:
    """One run without validation into ``run_dir`` (one process); ``member`` as for
    :func:`keras_glacier.training.data.prepare_data`."""
    from keras_glacier.training.data import encoder_for, prepare_data, training_sequence
    from keras_glacier.training.fit import data_facts, export_run, print_data_line, set_up_devices

    done = finished_run(run_dir, config) if resume else None
    if done is not None:
        print(f"the run in {run_dir} finished before", flush=True)
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())
    devices, precision = set_up_devices(config)
    resume = resume and (run_dir / "split.json").is_file() and (run_dir / "stats.json").is_file()
    source, bands, band_names, tiles, _, stats, summary = prepare_data(config, run_dir, resume, member=member)
    encoder = encoder_for(config, len(tiles))
    train_seq = training_sequence(config, run_dir, tiles, stats, bands)
    threshold = unvalidated_threshold(config)
    write_run_facts(run_dir, **data_facts(config, source, bands, band_names, summary, train_seq, encoder, devices,
                                          precision, member),
                    **({} if threshold is None else {"threshold": threshold}))
    print_data_line(source, tiles, [], band_names, train_seq, run_dir)
    decision = "the most probable class" if threshold is None else f"threshold {threshold:g}"
    print(f"no validation (--val-fraction 0): all {len(tiles)} labelled tiles train for {config.epochs} epochs, "
          f"the last epoch's network is kept, deciding at {decision}", flush=True)

    model = fit_blind(config, run_dir, train_seq, stats, bands, band_names, source, summary, encoder, threshold,
                      resume, callbacks)
    metrics = {**last_epoch_scores(run_dir / "history.csv"), "epochs": config.epochs, "tiles": len(tiles),
               **({} if threshold is None else {"threshold": threshold})}
    write_json(run_dir / METRICS_FILE, metrics)
    print_table("last epoch, on its augmented training crops (no validation tiles: --val-fraction 0)",
                {k: v for k, v in metrics.items() if k.startswith("train_")})
    result = RunResult(run_dir, config, metrics, model=run_dir / "model.keras", threshold=threshold)
    return export_run(config, result, model)


__all__ = ["UNVALIDATED_THRESHOLD", "fit_blind", "last_epoch_scores", "train_unvalidated", "unvalidated_threshold"]
