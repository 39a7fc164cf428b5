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
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from keras_glacier.fileio import atomic_write
from keras_glacier.training.config import TrainConfig
from keras_glacier.training.run_folder import CONFIG_FILE, RunResult, finished_run, read_run_facts, write_run_facts

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
        results.append(train_one(settings, path, again, callbacks, member=(index, config.seed)))
    return finish_ensemble(config, run_dir, results)


def finish_ensemble(config: TrainConfig, run_dir: Path, members: list[RunResult]) -> RunResult:
    """The ensemble of trained ``members``: scored on their shared validation tiles, saved, exported."""
    import keras

    from keras_glacier.model import GlacierEnsemble
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
    scores = ensemble.evaluate(val_seq, verbose=0, return_dict=True)
    metrics = {key: float(scores[key]) for key in BINARY_METRICS if key in scores}
    metrics.update({key: float(value) for key, value in scores.items() if key not in metrics})

    for name in ("split.json", "stats.json"):
        atomic_write(run_dir / name, lambda tmp, name=name: shutil.copyfile(first / name, tmp))
    facts = {key: value for key, value in read_run_facts(first).items() if key not in MEMBER_FACTS}
    write_run_facts(run_dir, **facts, members=len(members),
                    member_seeds=[int(m.config.seed) for m in members])
    mcc = ", ".join(f"{m.metrics['mcc']:.4f}" for m in members if "mcc" in m.metrics)
    if mcc:
        print(f"\nmembers' validation MCC at 0.5: {mcc}; the ensemble's: {metrics.get('mcc', float('nan')):.4f}")
    result = finish_run(config, run_dir, ensemble, val_seq, metrics, len(val), None,
                        what=f"ensemble of {len(members)} members")
    result.members = members
    return result


__all__ = ["MEMBER_PREFIX", "finish_ensemble", "member_config", "member_dir", "train_members"]
