"""``python -m benchmarks.accuracy``: the training recipe's accuracy on real imagery, fold by fold.

On the everest-west development set (12 real Landsat 7 tiles in 4 rows, see its README) each fold
holds out one row of tiles (a row is a scene, so held-out ground never touches training ground) and
trains the default recipe, and a variant with ``--crop 128``. How the held-out row is used is the
``--protocol``:

- ``test`` (the default): the held-out row is a test row the run never sees. The run trains on two of
  the other rows and validates on the row after the held-out one (``--val-scenes``): that row picks
  its best epoch (early stopping) and its decision threshold, as a user's own validation tiles would
  on a new region, and the scores are of the untouched test row.
- ``validation``: the held-out row is the run's validation row (the protocol of every table in
  RESULTS.md before 2026-12-01): it trains on the other three rows, and the row it is scored on also
  chose its best epoch and threshold, so its figures are optimistic by that selection.

Per fold it reports the MCC and IoU on the held-out row at the threshold the run chose and at 0.5
(on probabilities averaged over the four flip views, as predict and solution.py make them), the
epochs run and the wall time, next to two per-pixel baselines fitted on every non-held-out row
(logistic regression and histogram gradient boosting on the band values; they choose nothing on
the held-out row under either protocol): the network has to beat what the band values alone tell.
With several ``--seeds``, each fold also gets an "ensemble" row: the seeds' probabilities averaged,
as a ``model.pth`` packed from those runs would give (``python -m convert RUN_A RUN_B``), with its
threshold chosen on the averaged validation row.

Nothing is asserted: the figures are written as a markdown table to the terminal and to the
"Accuracy on everest-west" section of benchmarks/RESULTS.md (one ``### <label>`` subsection per
``--label``, so "before" and "after" figures stay side by side). Runs go in a temporary folder, or
are kept in ``--runs-dir`` (predictions.png and curves.png included) and reused from there.
The baselines need scikit-learn (an optional benchmark dependency); without it their columns are
left empty and the reason is printed.

    python -m benchmarks.accuracy                         # 4 folds x (default, --crop 128), seed 0
    python -m benchmarks.accuracy --protocol validation   # as the tables before 2026-12-01
    python -m benchmarks.accuracy --folds 0,2 --variants default --label before
    python -m benchmarks.accuracy --extra-args "--lr 3e-4" --label "lr 3e-4"
    python -m benchmarks.accuracy --variants crop128 --seeds 0,1,2 --runs-dir runs/acc   # trains seed 2 only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/everest-west"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "Accuracy on everest-west"
#: Training variants: name -> flags added to the default recipe.
VARIANTS = {"default": (), "crop128": ("--crop", "128")}
#: ``--protocol``: how the held-out row is used (module docstring).
PROTOCOLS = ("test", "validation")
COLUMNS = ("variant", "seed", "fold", "scored", "val", "MCC@t", "IoU@t", "t", "MCC@0.5", "IoU@0.5", "epochs", "best",
           "wall s", "LR MCC", "GB MCC")


# ------------------------------------------------------------------------------- pure parts
def row_folds(data: str | Path) -> list[str]:
    """The scene ids of ``data`` in order: fold ``i`` holds out scene ``i`` (a row of everest-west tiles)."""
    from keras_glacier.data.sources import discover

    return sorted({sample.scene_id for sample in discover(data).samples})


def fold_samples(data: str | Path, val_scene: str):
    """(source, train samples, val samples) of the fold that holds out ``val_scene``."""
    from keras_glacier.data.sources import discover
    from keras_glacier.training.data import chosen_split

    source = discover(data)
    train, val = chosen_split(source.samples, val_scene, data)
    return source, train, val


def validation_scene(scenes: Sequence[str], held_out: str) -> str:
    """The validation row of the ``test`` protocol's fold holding out ``held_out``: the next row, cyclically.

    Fixed rather than drawn, so every seed and variant of a fold validates on the same row.
    """
    if len(scenes) < 3:
        raise SystemExit(f"error: --protocol test needs at least 3 scenes (train, validation, test), "
                         f"found {len(scenes)}: use --protocol validation")
    return scenes[(list(scenes).index(held_out) + 1) % len(scenes)]


def data_without(data: str | Path, scene: str, folder: Path) -> Path:
    """``folder`` made a view of ``data`` without the tiles of ``scene``: links to every other tile's files.

    The training job then cannot see the test row at all (not even in its band statistics), yet the
    data is neither copied nor changed. Files of other samples keep their paths relative to ``data``,
    so the view has the dataset's layout.
    """
    from keras_glacier.data.sources import discover

    data, folder = Path(data).resolve(), Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    for sample in discover(data).samples:
        if sample.scene_id == scene:
            continue
        for path in (*sample.image_paths, *((sample.label_path,) if sample.label_path else ())):
            link = folder / Path(path).relative_to(data)  # discover(data) lists paths under data
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(path).resolve())
    return folder


def pixels(samples, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Band values (n, C) float32 and labels (n,) uint8 of every labelled pixel with finite bands."""
    from keras_glacier.constants import IGNORE_INDEX
    from keras_glacier.data.sources import read_sample

    xs, ys = [], []
    for sample in samples:
        image, label = read_sample(sample, tuple(bands))
        x = image.reshape(-1, image.shape[-1]).astype(np.float32)
        y = label.reshape(-1)
        keep = (y != IGNORE_INDEX) & np.isfinite(x).all(axis=1)
        xs.append(x[keep])
        ys.append(y[keep])
    return np.concatenate(xs), np.concatenate(ys).astype(np.uint8)


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Binary MCC (0 where undefined, as scikit-learn) and glacier IoU of boolean predictions."""
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    tp = float(np.sum(predicted & truth))
    fp = float(np.sum(predicted & ~truth))
    fn = float(np.sum(~predicted & truth))
    tn = float(np.sum(~predicted & ~truth))
    den = np.sqrt((tp + fp) * (tp + fn)) * np.sqrt((tn + fp) * (tn + fn))
    union = tp + fp + fn
    return {"mcc": float((tp * tn - fp * fn) / den) if den else 0.0, "iou": tp / union if union else 0.0}


def pixel_baselines(data: str | Path, val_scene: str, bands: str = "competition", seed: int = 0) -> dict[str, dict]:
    """Per-pixel baselines of one fold: ``{"LR": scores, "GB": scores}`` on the held-out scene.

    Logistic regression on standardised band values and scikit-learn's HistGradientBoostingClassifier
    (default settings, ``random_state=seed``), both fitted on the fold's training scenes and
    thresholded at 0.5. ``bands`` is the training job's ``--bands`` (the same band values it sees).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from keras_glacier.training.data import resolve_bands

    source, train, val = fold_samples(data, val_scene)
    indices, _ = resolve_bands(source, bands)
    x_train, y_train = pixels(train, indices)
    x_val, y_val = pixels(val, indices)
    models = {
        "LR": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "GB": HistGradientBoostingClassifier(random_state=seed),
    }
    return {name: scores(y_val == 1, model.fit(x_train, y_train).predict(x_val) == 1) for name, model in models.items()}


def training_settings(extra_args: str | Sequence[str] = ()) -> dict:
    """The training flags in ``extra_args`` (``"--lr 3e-4 --crop 128"``) as TrainConfig fields."""
    from keras_glacier.training.cli import build_parser, given_settings

    argv = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    return given_settings(build_parser().parse_args(argv))


def mean_rows(rows: Sequence[dict]) -> list[dict]:
    """One "mean" row per variant: the mean of every numeric column over its folds and seeds."""
    means = []
    for variant in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == variant]
        mean = {"variant": variant, "seed": "", "fold": "mean", "scored": f"{len(mine)} runs", "val": ""}
        for column in COLUMNS[COLUMNS.index("MCC@t"):]:
            values = [row[column] for row in mine if isinstance(row.get(column), (int, float))]
            mean[column] = statistics.fmean(values) if len(values) == len(mine) and values else ""
        means.append(mean)
    return means


def render_table(rows: Sequence[dict]) -> str:
    from benchmarks.common import markdown_table

    return markdown_table([*rows, *mean_rows(rows)], COLUMNS)


def write_section(path: str | Path, label: str, body: str) -> None:
    """Put ``body`` under ``### label`` in the file's "Accuracy on everest-west" section (others kept)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, found, rest = text.partition(f"\n## {SECTION}\n")
    if not found and text.startswith(f"## {SECTION}\n"):
        head, found, rest = "", True, text[len(f"## {SECTION}\n"):]
    section, sep, tail = rest.partition("\n## ") if found else ("", "", "")
    subsections = {}
    intro = section
    if found:
        parts = ("\n" + section).split("\n### ")
        intro = parts[0].strip("\n")
        for part in parts[1:]:
            title, _, content = part.partition("\n")
            subsections[title.strip()] = content.strip("\n")
    subsections[label] = body.strip("\n")
    intro = intro or (
        "Four folds on the everest-west development set (see its README), each holding out one row of tiles "
        "(a scene); written by `python -m benchmarks.accuracy`. MCC/IoU on the held-out row (scored) at the "
        "threshold the run chose (t) on its validation row (val) and at 0.5; LR / GB: per-pixel logistic "
        "regression and gradient boosting on the same band values, same fold. Figures are measurements, "
        "not assertions.")
    new_section = f"## {SECTION}\n\n{intro}\n" + "".join(
        f"\n### {title}\n\n{content}\n" for title, content in subsections.items())
    before = head.rstrip("\n") + "\n\n" if head.strip() else ""
    after = ("\n## " + tail) if sep else ""
    from keras_glacier.fileio import write_text

    write_text(path, before + new_section + after)


# ----------------------------------------------------------------------------------- training
def history_facts(run_dir: Path) -> tuple[int | str, int | str]:
    """(epochs run, best epoch by validation MCC, 1-based) from the run's history.csv.

    A ``--members`` run has no history of its own: its members' facts are joined with "+" in member
    order ("27+31"), so the table still shows how long each network trained.
    """
    from keras_glacier.callbacks import read_history
    from keras_glacier.training.members import member_dir
    from keras_glacier.training.refit import validation_run_dir

    members = []
    while member_dir(run_dir, len(members)).is_dir():
        members.append(history_facts(member_dir(run_dir, len(members))))
    if members:
        return tuple("+".join(str(facts[i]) for facts in members) for i in (0, 1))
    if validation_run_dir(run_dir).is_dir():  # --refit: the validated run chose the refit's epochs
        return history_facts(validation_run_dir(run_dir))
    history = read_history(run_dir / "history.csv") or {}
    mcc = [v if v == v else -1.0 for v in history.get("val_mcc", [])]
    if not any(v == v for v in history.get("val_mcc", [])):  # --val-fraction 0: epochs run, no best
        return len(history.get("epoch", [])) or "", ""
    return len(mcc), int(np.argmax(mcc)) + 1


def probability_scores(prob: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """The held-out columns of a row: MCC and IoU at ``threshold`` and at 0.5 (labelled pixels only)."""
    keep = truth != 255
    prob, truth = prob[keep], truth[keep] == 1
    at_t, at_half = scores(truth, prob > threshold), scores(truth, prob > 0.5)
    return {"MCC@t": at_t["mcc"], "IoU@t": at_t["iou"], "t": threshold,
            "MCC@0.5": at_half["mcc"], "IoU@0.5": at_half["iou"]}


def ensemble_row(variant: str, fold: int, scored: str, members: Sequence[tuple], val_scene: str | None = None,
                 threshold: float | None = None) -> dict:
    """The row of an ensemble of ``members`` of one fold.

    Each member is (seed, held-out probabilities, labels, wall s) and, under the ``test`` protocol,
    also (validation probabilities, validation labels). Their probabilities are averaged, as
    ``python -m convert RUN_A RUN_B`` and solution.py do, and the threshold is chosen for MCC on the
    averaged validation map, as a single run chooses its own on its validation tiles: under the
    ``validation`` protocol (no validation maps given) that is the held-out row itself. The wall time
    is the members' sum: the ensemble costs every member's training. ``threshold``: the one to decide
    at instead (:func:`ensemble_threshold`).
    """
    from keras_glacier.metrics.threshold import best_threshold

    def averaged(prob_at: int, truth_at: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        truth = members[0][truth_at]
        if any(m[truth_at].shape != truth.shape or not np.array_equal(m[truth_at], truth) for m in members):
            raise ValueError(f"fold {fold}: ensemble members were scored on different {what} pixels")
        return np.mean([m[prob_at] for m in members], axis=0), truth

    prob, truth = averaged(1, 2, "held-out")
    if threshold is None:
        chooser = averaged(4, 5, "validation") if len(members[0]) > 4 else (prob, truth)
        threshold, _ = best_threshold(chooser[1], chooser[0])
    return {"fold": fold, "variant": f"{variant} ensemble", "seed": "+".join(str(m[0]) for m in members),
            "scored": scored, "val": val_scene or scored, "epochs": "", "best": "",
            "wall s": float(sum(m[3] for m in members)), **probability_scores(prob, truth, float(threshold))}


def ensemble_threshold(settings: dict) -> float | None:
    """The threshold ``train --members N`` with these flags decides at, where it is not chosen on the
    averaged validation map (None): ``--threshold`` when given, 0.5 for refitted networks and for
    networks trained without validation."""
    from keras_glacier.training.refit import REFIT_THRESHOLD
    from keras_glacier.training.unvalidated import UNVALIDATED_THRESHOLD

    given = settings.get("threshold", "auto")
    if given != "auto":
        return float(given)
    if settings.get("val_fraction") == 0:
        return UNVALIDATED_THRESHOLD
    return REFIT_THRESHOLD if settings.get("refit") else None


def held_out_probabilities(run_dir: Path, config, test=None) -> tuple[np.ndarray, ...]:
    """The run's flip-averaged glacier probabilities on its validation tiles, and their labels.

    ``test``: tiles the run never saw, scored first, read as the run reads its own (its bands, its
    band statistics, whole tiles) with the model loaded once: (test probabilities, test labels,
    validation probabilities, validation labels).

    A ``--refit`` run's network has trained on the validation tiles, so its validation maps are
    its validated run's (``RUN_DIR/validation-run``), whose network has not. A run without
    validation (``--val-fraction 0``) has none: only the test maps.
    """
    import keras

    from keras_glacier.data.stats import BandStats
    from keras_glacier.inference import keras_forward
    from keras_glacier.training.config import TrainConfig
    from keras_glacier.training.data import make_datasets, prepare_data
    from keras_glacier.training.refit import validation_run_dir
    from keras_glacier.training.threshold import validation_probabilities

    validated = validation_run_dir(run_dir) if config.refit else None
    _, bands, _, train, val, _, _ = prepare_data(config, run_dir, resume=True)
    stats = BandStats.load(run_dir / "stats.json")
    forward = keras_forward(keras.saving.load_model(run_dir / "model.keras", compile=False))
    maps = ()
    for samples in ((test,) if test is not None else ()) + (() if validated or not val else (val,)):
        _, seq = make_datasets(config, run_dir, train, list(samples), stats, bands)
        maps += validation_probabilities(forward, seq)
    if validated:
        maps += held_out_probabilities(validated, TrainConfig.from_run(validated))
    return maps


def run_fold(data: Path, held_out: str, variant: str, seed: int, settings: dict, work: Path,
             val_scene: str | None = None) -> tuple[dict, tuple[np.ndarray, ...]]:
    """Train one fold's run and score it on the held-out scene: (row, maps).

    With a ``val_scene`` (the ``test`` protocol) the run is trained on a view of ``data`` without the
    held-out row (:func:`data_without`) and validates on ``val_scene``; ``maps`` is the held-out
    row's (probabilities, labels), then the validation row's, which choose an ensemble's threshold.
    Without one (the ``validation`` protocol) it validates on the held-out row itself and ``maps`` is
    that row's (probabilities, labels).

    The row and the maps are saved in the run folder (``accuracy.json``, ``accuracy.npz``) after
    scoring, so a kept ``--runs-dir`` scores a finished run again without training it (an ensemble
    can then add a seed to runs of an earlier invocation); a run folder trained with other flags is
    refused rather than mixed in.
    """
    from keras_glacier.data.sources import discover
    from keras_glacier.training.config import TrainConfig
    from keras_glacier.training.fit import train

    testing = val_scene is not None
    if val_scene == held_out:
        raise ValueError(f"the test protocol validates on another row than the held-out {held_out}, got {val_scene}")
    merged = {**settings, **training_settings(VARIANTS[variant])}
    blind = merged.get("val_fraction") == 0  # every other row trains; nothing validates
    if blind and not testing:
        raise ValueError("--val-fraction 0 trains on every row it is given, the held-out one included under the "
                         "validation protocol: use the test protocol")
    val_scene = "none" if blind else val_scene if testing else held_out
    run_dir = work / (f"{variant}-seed{seed}-test{held_out}-val{val_scene}" if testing
                      else f"{variant}-seed{seed}-{held_out}")
    saved = kept_result(run_dir, merged)
    if saved is not None:
        print(f"[accuracy] {run_dir.name}: scored from the kept run in {run_dir}", flush=True)
        return saved
    train_data = data_without(data, held_out, work / f"data-without-{held_out}") if testing else data
    config = TrainConfig(**{**merged, "data": str(train_data), "out": str(run_dir),
                            "val_scenes": None if blind else val_scene, "seed": seed, "export": False})
    start = time.perf_counter()
    result = train(config, overwrite=True)
    wall = time.perf_counter() - start
    threshold = float(result.threshold if result.threshold is not None else 0.5)
    epochs, best = history_facts(run_dir)
    test = None
    if testing:
        test = [s for s in discover(data, task=config.task, mask_layout=config.mask_layout).samples
                if s.scene_id == held_out]
    maps = held_out_probabilities(run_dir, config, test)
    row = {"variant": variant, "seed": seed, "scored": held_out, "val": val_scene, "epochs": epochs, "best": best,
           "wall s": wall, **probability_scores(maps[0], maps[1], threshold)}
    save_result(run_dir, merged, row, *maps)
    return row, maps


#: The arrays of accuracy.npz, in the order of :func:`run_fold`'s maps.
MAP_NAMES = ("prob", "truth", "val_prob", "val_truth")


def save_result(run_dir: Path, settings: dict, row: dict, *maps: np.ndarray) -> None:
    """What :func:`kept_result` reads back: the row and flags (JSON), then the maps (npz, :data:`MAP_NAMES`)."""
    from keras_glacier.fileio import atomic_write, write_json

    arrays = dict(zip(MAP_NAMES, maps))
    atomic_write(run_dir / "accuracy.npz", lambda tmp: np.savez_compressed(tmp, **arrays))
    write_json(run_dir / "accuracy.json", {"settings": settings, "row": row})


def kept_result(run_dir: Path, settings: dict) -> tuple[dict, tuple[np.ndarray, ...]] | None:
    """The saved (row, maps) of a finished run in ``run_dir``, or None to train it.

    Raises SystemExit with one line when the run was trained with other flags than ``settings``.
    """
    record, arrays = run_dir / "accuracy.json", run_dir / "accuracy.npz"
    if not (record.is_file() and arrays.is_file()):
        return None
    saved = json.loads(record.read_text(encoding="utf-8"))
    if saved.get("settings") != json.loads(json.dumps(settings)):
        raise SystemExit(f"error: {run_dir} was trained with {saved.get('settings')}, not {settings}: "
                         "give another --runs-dir")
    with np.load(arrays) as files:
        row = saved["row"]
        row.setdefault("scored", row.get("val", ""))  # kept before the "scored" column
        return row, tuple(files[name] for name in MAP_NAMES if name in files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"band-folder dataset (default {DEFAULT_DATA})")
    parser.add_argument("--folds", default=None, help="comma-separated fold numbers (0-based; default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="test",
                        help="test: the held-out row is never seen, the next row validates (default); validation: "
                             "the held-out row is the run's validation row (optimistic; the tables before 2026-12-01)")
    parser.add_argument("--extra-args", default="", help="training flags added to every run, e.g. \"--lr 3e-4\"")
    parser.add_argument("--quick", action="store_true", help="2 epochs per run: checks the pipeline, not accuracy")
    parser.add_argument("--label", default=None, help="subsection title in RESULTS.md (default: the extra args)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to update (default RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="keep the runs here (default: a temporary folder); a run already finished there with "
                             "the same flags is scored again, not retrained, e.g. to add a seed to an ensemble")
    args = parser.parse_args(argv)
    if argv is None:  # the training command's default allocator (--malloc reuse): 10-20% faster CPU steps
        from keras_glacier.memory import restart_with_allocator

        restart_with_allocator("reuse", "benchmarks.accuracy", sys.argv[1:])

    scenes = row_folds(args.data)
    folds = range(len(scenes)) if args.folds is None else [int(f) for f in args.folds.split(",")]
    if any(not 0 <= f < len(scenes) for f in folds):
        parser.error(f"--folds: {args.data} has {len(scenes)} scenes ({', '.join(scenes)}), "
                     f"so folds 0..{len(scenes) - 1}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = training_settings(args.extra_args)
    if args.quick:
        settings.setdefault("epochs", 2)
    bands = settings.get("bands", "competition")

    baselines = {}
    try:
        for f in folds:
            baselines[f] = pixel_baselines(args.data, scenes[f], bands=bands)
            print(f"[accuracy] fold {f} (held out {scenes[f]}): baselines "
                  + ", ".join(f"{k} MCC {v['mcc']:.3f}" for k, v in baselines[f].items()), flush=True)
    except ImportError as exc:
        print(f"[accuracy] per-pixel baselines skipped: {exc} (pip install scikit-learn)", flush=True)

    rows, ensembles, load_start, start = [], [], os.getloadavg()[0], time.perf_counter()
    total = len(variants) * len(seeds) * len(folds)
    members = {}  # (variant, fold) -> [(seed, probabilities, labels, wall s)]: seeds >= 2 make an ensemble
    with contextlib.ExitStack() as stack:
        tmp = args.runs_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="glacier-accuracy-"))
        for variant in variants:
            for seed in seeds:
                for f in folds:
                    val = validation_scene(scenes, scenes[f]) if args.protocol == "test" else None
                    row, maps = run_fold(args.data, scenes[f], variant, seed, settings, Path(tmp), val_scene=val)
                    row = {"fold": f, **row, **baseline_columns(baselines, f)}
                    rows.append(row)
                    print(f"[accuracy] {row}", flush=True)
                    members.setdefault((variant, f), []).append((seed, *maps[:2], row["wall s"], *maps[2:]))
                    if len(seeds) > 1 and seed == seeds[-1]:
                        shown = "none" if settings.get("val_fraction") == 0 else val  # as the runs' rows
                        ensembles.append({**ensemble_row(variant, f, scenes[f], members.pop((variant, f)), shown,
                                                         threshold=ensemble_threshold(settings)),
                                          **baseline_columns(baselines, f)})
                        print(f"[accuracy] {ensembles[-1]}", flush=True)
                    report([*rows, *ensembles], args, argv, load_start, start, done=len(rows) == total)
    return 0


def baseline_columns(baselines: dict, fold: int) -> dict:
    return {name + " MCC": baselines.get(fold, {}).get(name, {}).get("mcc", "") for name in ("LR", "GB")}


def report(rows, args, argv, load_start: float, start: float, done: bool) -> None:
    """Print the table so far and (re)write its RESULTS.md subsection: a cut-short run keeps its folds."""
    table = render_table(rows)
    extra = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    note = (f"`{' '.join(['python -m benchmarks.accuracy', extra]).strip()}` on {_dt.date.today()}, "
            f"{os.cpu_count()} cores, load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} "
            f"at the end, {time.perf_counter() - start:.0f} s in all; protocol {args.protocol}; "
            f"training flags beyond the data: "
            f"{args.extra_args or 'none'}{' (quick: 2 epochs)' if args.quick else ''}"
            f"{'' if done else f'; partial: {len(rows)} runs done so far'}.")
    print(table)
    print(note, flush=True)
    if not args.no_write:
        write_section(args.out, args.label or args.extra_args or "current defaults", f"{note}\n\n{table}")
        print(f"[accuracy] wrote the {SECTION!r} section of {args.out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
