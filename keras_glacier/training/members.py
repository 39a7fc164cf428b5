"""``--members N``: N networks on one split, differing only in their seed, kept as one ensemble.

With few training tiles, networks trained from different seeds err in different places, and the
average of their probabilities scores above any one of them (benchmarks/RESULTS.md, everest-west).
Each member is a complete run in ``RUN_DIR/member-i`` (its own history, figures and model.keras),
exactly the run ``--seed`` + i - 1 would be, except that every member holds out the ensemble's
validation tiles (the split, and the demo data, follow the ensemble's ``--seed``). The run folder
then holds the ensemble: ``model.keras`` (a :class:`~keras_glacier.model.GlacierEnsemble`, which
every tool loads like any model), its decision threshold chosen on the averaged flip-TTA validation
probabilities, ``metrics.json`` of the ensemble, the first member's ``split.json`` and
``stats.json``, and ``model.pth`` with all members (solution.py averages them).

With ``--refit`` every member is a refit run (``RUN_DIR/member-i/validation-run`` then its refitted
network in ``member-i``). The refitted networks have seen the validation tiles, so the ensemble of
the validated members is made first, complete, in ``RUN_DIR/validation-run`` (its threshold and
scores on the shared validation tiles), and the run folder's ensemble of the refitted members takes
those scores and the refit's decision threshold, as a single ``--refit`` run does
(:func:`keras_glacier.training.refit.refit_threshold`).

With ``--val-fraction 0`` every member trains on every labelled tile with no validation
(:mod:`keras_glacier.training.unvalidated`) and the ensemble decides at 0.5 (or ``--threshold``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from keras_glacier.fileio import atomic_write, save_keras_model, write_json
from keras_glacier.training.config import TrainConfig
from keras_glacier.training.refit import refit_metrics, refit_threshold, train_refit, validation_run_dir
from keras_glacier.training.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RunResult,
    finished_run,
    print_table,
    read_run_facts,
    write_run_facts,
)
from keras_glacier.training.unvalidated import train_unvalidated, unvalidated_threshold

#: ``RUN_DIR/member-1`` .. ``member-N``.
MEMBER_PREFIX = "member-"
#: Run facts that describe one member's training, not the ensemble's (run.json).
MEMBER_FACTS = ("member", "seed", "threshold")


def member_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"{MEMBER_PREFIX}{index + 1}"


def member_config(config: TrainConfig, index: int) -> TrainConfig:
    """The settings of member ``index`` (0-based): one network, seed ``config.seed + index``."""
    return dataclasses.replace(config, members=1, seed=config.seed + index,
                               out=str(member_dir(Path(config.out), index)), export=False)


def train_members(config: TrainConfig, run_dir: Path, resume: bool, callbacks: Sequence = ()) -> RunResult:
    """Train (or on resume finish) every member, then build, score, save and export the ensemble."""
    from keras_glacier.training.fit import train_one

    config = dataclasses.replace(config, out=str(run_dir))
    results = []
    for index in range(config.members):
        path, settings = member_dir(run_dir, index), member_config(config, index)
        done = finished_run(path, settings) if resume else None
        if done is not None:
            print(f"member {index + 1} of {config.members}: finished before, in {path}", flush=True)
            results.append(done)
            continue
        print(f"member {index + 1} of {config.members}: seed {settings.seed}, run folder {path}", flush=True)
        again = resume and (path / CONFIG_FILE).is_file()
        if settings.refit:
            path.mkdir(parents=True, exist_ok=True)
            write_json(path / CONFIG_FILE, settings.to_dict())  # first, so that an interrupted member resumes
            results.append(train_refit(settings, path, again, callbacks, member=(index, config.seed)))
        elif not settings.validates:
            results.append(train_unvalidated(settings, path, again, callbacks, member=(index, config.seed)))
        else:
            results.append(train_one(settings, path, again, callbacks, member=(index, config.seed)))
    if config.refit:
        return finish_refit_ensemble(config, run_dir, results)
    if not config.validates:
        return finish_unvalidated_ensemble(config, run_dir, results)
    return finish_ensemble(config, run_dir, results)


def finish_ensemble(config: TrainConfig, run_dir: Path, members: list[RunResult]) -> RunResult:
    """The ensemble of trained ``members``: scored on their shared validation tiles, saved, exported."""
    import keras

    from keras_glacier.model import GlacierEnsemble
    from keras_glacier.training import parallel
    from keras_glacier.training.data import make_datasets, prepare_data
    from keras_glacier.training.fit import BINARY_METRICS, class_weights_for, compile_model, finish_run

    first = members[0].run_dir
    settings = TrainConfig.from_run(first)
    _, bands, _, train_tiles, val, stats, summary = prepare_data(settings, first, resume=True,
                                                                 member=(0, config.seed))
    _, val_seq = make_datasets(settings, first, train_tiles, val, stats, bands)
    networks = [keras.saving.load_model(m.run_dir / "model.keras", compile=False) for m in members]
    ensemble = GlacierEnsemble(networks)
    classes = list(ensemble.get_config()["class_names"])
    compile_model(ensemble, config, 1, classes, class_weights_for(config, summary))
    scores = ensemble.evaluate(val_seq, verbose=0, return_dict=True, callbacks=parallel.step_callbacks())
    metrics = {key: float(scores[key]) for key in BINARY_METRICS if key in scores}
    metrics.update({key: float(value) for key, value in scores.items() if key not in metrics})

    write_ensemble_files(run_dir, members)
    mcc = ", ".join(f"{m.metrics['mcc']:.4f}" for m in members if "mcc" in m.metrics)
    if mcc:
        print(f"\nmembers' validation MCC at 0.5: {mcc}; the ensemble's: {metrics.get('mcc', float('nan')):.4f}")
    result = finish_run(config, run_dir, ensemble, val_seq, metrics, len(val), None,
                        what=f"ensemble of {len(members)} members")
    result.members = members
    return result


def write_ensemble_files(run_dir: Path, members: list[RunResult], **facts) -> None:
    """The first member's split.json and stats.json, and run.json: the members' shared facts plus ``facts``."""
    first = members[0].run_dir
    for name in ("split.json", "stats.json"):
        atomic_write(run_dir / name, lambda tmp, name=name: shutil.copyfile(first / name, tmp))
    shared = {key: value for key, value in read_run_facts(first).items() if key not in MEMBER_FACTS}
    write_run_facts(run_dir, **{**shared, **facts}, members=len(members),
                    member_seeds=[int(m.config.seed) for m in members])


def finish_refit_ensemble(config: TrainConfig, run_dir: Path, members: list[RunResult]) -> RunResult:
    """``--members N --refit``: the validated members' ensemble in ``RUN_DIR/validation-run`` (its
    threshold, its scores), then the refitted members' ensemble in ``run_dir``, saved and exported."""
    validated_dir = validation_run_dir(run_dir)
    validated_dir.mkdir(parents=True, exist_ok=True)
    first = dataclasses.replace(config, refit=False, export=False, out=str(validated_dir))
    write_json(validated_dir / CONFIG_FILE, first.to_dict())
    validated_members = [
        finished_run(validation_run_dir(m.run_dir), TrainConfig.from_run(validation_run_dir(m.run_dir)))
        for m in members]
    validated = finish_ensemble(first, validated_dir, validated_members)

    threshold = refit_threshold(config, validated.threshold)
    epochs = [int(m.metrics["refit_epochs"]) for m in members]
    tiles = int(members[0].metrics["refit_tiles"])
    metrics = refit_metrics(validated.metrics, threshold, epochs, tiles)
    result = save_ensemble(config, run_dir, members, threshold, metrics,
                           f"validated ensemble's scores (the refitted members, trained {'+'.join(map(str, epochs))} "
                           f"epochs on all {tiles} tiles, have seen its validation tiles)",
                           refit_epochs=epochs, refit_tiles=tiles, validated_run=validated_dir.name)
    result.validated = validated
    return result


def finish_unvalidated_ensemble(config: TrainConfig, run_dir: Path, members: list[RunResult]) -> RunResult:
    """``--members N --val-fraction 0``: the members' ensemble, deciding at 0.5 (or ``--threshold``), with no
    scores (nothing was held out): metrics.json holds the members' mean last-epoch training scores."""
    threshold = unvalidated_threshold(config)
    keys = [k for k in members[0].metrics if k.startswith("train_") and all(k in m.metrics for m in members)]
    metrics = {**{k: sum(float(m.metrics[k]) for m in members) / len(members) for k in keys},
               "epochs": config.epochs, "tiles": int(members[0].metrics["tiles"]),
               **({} if threshold is None else {"threshold": threshold})}
    return save_ensemble(config, run_dir, members, threshold, metrics,
                         f"members' mean last-epoch scores on their training crops ({len(members)} members, "
                         "no validation tiles: --val-fraction 0)")


def save_ensemble(config: TrainConfig, run_dir: Path, members: list[RunResult], threshold: float | None,
                  metrics: dict, title: str, **facts) -> RunResult:
    """The ensemble of trained ``members`` deciding at ``threshold``, with ``metrics`` as its scores:
    model.keras, metrics.json, the shared run files, then model.pth (unless ``--no-export``)."""
    import keras

    from keras_glacier.model import GlacierEnsemble
    from keras_glacier.training.fit import export_run

    networks = [keras.saving.load_model(m.run_dir / "model.keras", compile=False) for m in members]
    ensemble = GlacierEnsemble(networks, threshold=threshold)
    save_keras_model(ensemble, run_dir / "model.keras")
    write_json(run_dir / METRICS_FILE, metrics)
    write_ensemble_files(run_dir, members, **facts, **({} if threshold is None else {"threshold": threshold}))
    print_table(title, {k: v for k, v in metrics.items() if isinstance(v, float) and k != "threshold"})
    result = RunResult(run_dir, config, metrics, model=run_dir / "model.keras", threshold=threshold)
    result.members = members
    return export_run(config, result, ensemble)


__all__ = ["MEMBER_PREFIX", "finish_ensemble", "finish_refit_ensemble", "finish_unvalidated_ensemble", "member_config",
           "member_dir", "save_ensemble", "train_members"]
