"""``python -m keras_glacier.train``: train the glacier network and export it for the competition.

With no ``--data`` the job generates the deterministic demo scenes and trains on them, so the very
first command a newcomer runs ends with a real ``model.keras`` and ``model.pth``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from keras_glacier.memory import ALLOCATORS, restart_with_allocator

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
RUN_FILES = ("model.keras", "model.pth", "best.keras", "stats.json", "config.json", "split.json",
             "metrics.json", "history.csv", "curves.png", "predictions.png")


class UsageError(ValueError):
    """A mistake in the command line or the run folder: reported in one line, without a traceback."""


def parse_bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(part) for part in text.split(",") if part.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands takes comma-separated channel numbers, got {text!r}") from None
    if not bands or min(bands) < 0 or len(set(bands)) != len(bands):
        raise argparse.ArgumentTypeError(f"--bands needs distinct non-negative channel numbers, got {text!r}")
    return bands


def build_parser() -> argparse.ArgumentParser:
    from keras_glacier.constants import DEFAULT_BANDS

    parser = argparse.ArgumentParser(
        prog="python -m keras_glacier.train",
        description="Train the DeepLabV3+ (ResNet-34, ASPP+CBAM) glacier segmenter with XLA-compiled "
        "Keras+JAX, then export model.keras and the competition's model.pth.",
    )
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder: HKH slice_<i>_image_<j>.npy / slice_<i>_mask_<j>.npy files, or "
                        "band folders Band1..BandN/*.tif with label/*.tif (detected). Absent: generate and "
                        "train on the built-in synthetic demo scenes.")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder for model.keras, model.pth, stats.json, config.json, split.json, "
                        "history.csv, curves.png, predictions.png (default: runs/demo or runs/<data folder "
                        "name>, numbered -2, -3, ... when it already holds a finished run)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum number of epochs (default 40)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per step, summed over devices with --distribute data_parallel (default 4)")
    parser.add_argument("--crop", type=int, default=None,
                        help="random square crop for training, a multiple of 16; tiles no larger than it "
                        "are used whole (default 256; use 512 on accelerators)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="loss = alpha * BCE + (1 - alpha) * Dice (default 0.5)")
    parser.add_argument("--bands", type=parse_bands, default=None,
                        help=f"channels of the 15-channel .npy slices to use, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_BANDS))}); band-folder data uses all its band folders")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="fraction of scenes held out for validation; split by scene, never by tile "
                        "(default 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the split, shuffling, augmentation, "
                        "initialisation and demo data (default 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="keras dtype policy; mixed_bfloat16 for TPUs and recent GPUs (slower on CPU), "
                        "mixed_float16 for older GPUs (default float32)")
    parser.add_argument("--distribute", choices=("none", "data_parallel"), default=None,
                        help="data_parallel splits each batch over all devices (TPU cores, GPUs) with "
                        "keras.distribution.DataParallel (default none)")
    parser.add_argument("--no-aug", action="store_true", default=None,
                        help="turn off training augmentation (flips, 90-degree rotations, brightness/contrast, "
                        "noise)")
    parser.add_argument("--cache", action="store_true", default=None,
                        help="cache the selected bands of all tiles in one compact memmap in the run folder, "
                        "so epochs after the first do not re-read the source files")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="torchvision-layout ResNet-34 state dict (.pth) to initialise the encoder with; "
                        "the 3-channel stem is adapted to the number of bands. Nothing is downloaded.")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation MCC (default 10)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader threads (default 2)")
    parser.add_argument("--demo-tiles", type=int, default=None,
                        help="with no --data: number of demo tiles to generate (default 64)")
    parser.add_argument("--demo-size", type=int, default=None,
                        help="with no --data: height and width of the demo tiles (default 128)")
    parser.add_argument("--no-export", action="store_true", default=None,
                        help="skip writing and verifying model.pth at the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted or finished run in --out from its last completed epoch, "
                        "with the settings saved in its config.json (only --epochs may be raised)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into an --out folder that already holds a run, replacing it")
    parser.add_argument("--malloc", choices=ALLOCATORS, default="reuse",
                        help="'reuse' (default): on Linux, restart once with glibc set to keep freed memory "
                        "(keras_glacier.memory), which makes CPU training steps 10-20%% faster and keeps the "
                        "peak heap until exit; 'default': run under the allocator settings as started")
    return parser


DEFAULTS = dict(
    data=None, epochs=40, batch_size=4, crop=256, lr=1e-3, weight_decay=1e-4, alpha=0.5, bands=None,
    val_fraction=0.2, seed=0, precision="float32", distribute="none", no_aug=False, cache=False,
    pretrained=None, patience=10, workers=2, demo_tiles=64, demo_size=128, no_export=False,
)


def resolve_settings(args: argparse.Namespace, saved: dict | None) -> dict:
    """Flag given on the command line > the resumed run's config.json > the documented default."""
    settings = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if saved is not None and key != "epochs":
            settings[key] = saved.get(key, default)
        else:
            settings[key] = given if given is not None else default
    if saved is not None and args.epochs is not None:
        settings["epochs"] = args.epochs
    elif saved is not None:
        settings["epochs"] = saved.get("epochs", DEFAULTS["epochs"])
    for key in ("data", "pretrained"):
        if settings[key] is not None:
            settings[key] = str(settings[key])
    if settings["bands"] is not None:
        settings["bands"] = list(settings["bands"])
    check_settings(settings)
    return settings


def check_settings(s: dict) -> None:
    if s["epochs"] < 1:
        raise UsageError(f"--epochs must be at least 1, got {s['epochs']}")
    if s["batch_size"] < 1:
        raise UsageError(f"--batch-size must be at least 1, got {s['batch_size']}")
    if s["crop"] is not None and (s["crop"] < 16 or s["crop"] % 16):
        raise UsageError(f"--crop must be a positive multiple of 16, got {s['crop']}")
    if not 0.0 <= s["alpha"] <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1], got {s['alpha']}")
    if not 0.0 < s["val_fraction"] < 1.0:
        raise UsageError(f"--val-fraction must lie strictly between 0 and 1, got {s['val_fraction']}")
    if s["lr"] <= 0:
        raise UsageError(f"--lr must be positive, got {s['lr']}")
    if s["data"] is not None and not Path(s["data"]).exists():
        raise UsageError(f"--data {s['data']}: no such folder")
    if s["pretrained"] is not None and not Path(s["pretrained"]).is_file():
        raise UsageError(f"--pretrained {s['pretrained']}: no such file")


def choose_run_dir(args: argparse.Namespace) -> Path:
    """Pick the run folder without ever clobbering a previous run by accident."""
    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        if not (args.out / "config.json").exists():
            raise UsageError(f"--resume: {args.out / 'config.json'} does not exist, so there is no run to continue")
        return args.out
    if args.out is not None:
        existing = [name for name in RUN_FILES if (args.out / name).exists()] + (
            ["backup/"] if (args.out / "backup").exists() else [])
        if existing and not args.overwrite:
            raise UsageError(f"--out {args.out} already holds a run ({', '.join(existing[:3])}); "
                             "use --resume to continue it, --overwrite to replace it, or another --out")
        if existing:
            for name in RUN_FILES:
                (args.out / name).unlink(missing_ok=True)
            shutil.rmtree(args.out / "backup", ignore_errors=True)
        return args.out
    base = Path("runs") / (Path(args.data).resolve().name if args.data else "demo")
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def write_json(path: Path, payload) -> None:
    """Atomic JSON write: a crash leaves the previous file or none, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def set_up_devices(settings: dict) -> int:
    """Applies the precision policy and distribution; returns the number of devices in use."""
    import keras

    keras.mixed_precision.set_global_policy(settings["precision"])
    keras.utils.set_random_seed(settings["seed"])
    if settings["distribute"] == "data_parallel":
        devices = keras.distribution.list_devices()
        if settings["batch_size"] % len(devices):
            raise UsageError(f"--batch-size {settings['batch_size']} must be a multiple of the "
                             f"{len(devices)} devices used by --distribute data_parallel")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return len(devices)
    return 1


def make_optimizer(settings: dict, steps_per_epoch: int):
    """AdamW under a cosine decay with a short linear warm-up, the usual recipe for DeepLab from scratch."""
    import keras

    total = max(1, settings["epochs"] * steps_per_epoch)
    warmup = min(max(1, steps_per_epoch), total // 10 + 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings["lr"] * 0.1, decay_steps=max(1, total - warmup), alpha=0.01,
        warmup_target=settings["lr"], warmup_steps=warmup)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=settings["weight_decay"])


def compile_model(model, settings: dict, steps_per_epoch: int) -> None:
    from keras_glacier.losses import BceDiceLoss
    from keras_glacier.metrics import segmentation_metrics

    model.compile(optimizer=make_optimizer(settings, steps_per_epoch), loss=BceDiceLoss(alpha=settings["alpha"]),
                  metrics=segmentation_metrics(), jit_compile=True)


def print_table(title: str, metrics: dict, stream=sys.stdout) -> None:
    width = max(len(k) for k in metrics)
    print(f"\n{title}", file=stream)
    print(f"| {'metric'.ljust(width)} | value  |", file=stream)
    print(f"|{'-' * (width + 2)}|--------|", file=stream)
    for key, value in metrics.items():
        print(f"| {key.ljust(width)} | {value:.4f} |", file=stream)


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def effective_crop(requested: int | None, shape: tuple[int, int]) -> int | None:
    """The crop the loader should use for tiles of ``shape``.

    Tiles larger than the requested crop are cropped (randomly in training). Smaller tiles are used
    whole; when they are not multiples of the output stride they are padded up to one, with NaN
    bands and ignored labels, so that no real pixel is dropped and none is invented.
    """
    from keras_glacier.constants import OUTPUT_STRIDE

    h, w = shape
    if requested is not None and min(h, w) > requested:
        return requested
    side = ceil_to(max(h, w), OUTPUT_STRIDE)
    return None if h == w == side else side


def prepare_data(settings: dict, run_dir: Path, resume: bool):
    """Find the samples, split them by scene, and compute (or on resume reload) the statistics."""
    from keras_glacier.data.demo import make_demo_dataset
    from keras_glacier.data.errors import InputError
    from keras_glacier.data.sources import discover, read_sample
    from keras_glacier.data.split import load_split, save_split, split_by_scene
    from keras_glacier.data.stats import BandStats, compute_stats

    if settings["data"] is None:
        demo_dir = run_dir / "demo_data"
        tiles_per_scene = 4
        scenes = max(2, -(-settings["demo_tiles"] // tiles_per_scene))
        if not resume:  # regenerate: a previous run in this folder may have used other demo settings
            shutil.rmtree(demo_dir, ignore_errors=True)
        if not any(demo_dir.glob("slice_*_mask_*.npy")):
            make_demo_dataset(demo_dir, scenes=scenes, tiles_per_scene=tiles_per_scene,
                              size=settings["demo_size"], seed=settings["seed"])
        root = demo_dir
    else:
        root = Path(settings["data"])
    source = discover(root)
    if not source.has_labels:
        missing = next(s for s in source.samples if s.label_path is None)
        raise InputError(f"{missing.image_paths[0]}: no label for this tile; training needs a label/ folder")
    bands = source.resolve_bands(settings["bands"])
    if resume:
        train, val = load_split(run_dir / "split.json", source.samples)
        stats = BandStats.load(run_dir / "stats.json")
    else:
        train, val = split_by_scene(source.samples, settings["val_fraction"], settings["seed"])
        if not val:
            raise InputError(f"{root}: only one scene ({train[0].scene_id}), so no scene is left for validation; "
                             "add scenes or tiles from other scenes")
        save_split(run_dir / "split.json", train, val, seed=settings["seed"], val_fraction=settings["val_fraction"],
                   data=str(root))
        stats = compute_stats(train, bands, seed=settings["seed"])
        stats.save(run_dir / "stats.json")
    first_image, _ = read_sample(train[0], bands)
    return source, bands, train, val, stats, first_image.shape[:2]


def make_datasets(settings: dict, run_dir: Path, train, val, stats, bands, tile_shape):
    from keras_glacier.data.augment import AugmentConfig
    from keras_glacier.data.dataset import GlacierSequence

    cache = run_dir / "cache" if settings["cache"] else None
    common = dict(stats=stats, bands=bands, workers=settings["workers"],
                  cache_dir=None if cache is None else cache)
    train_seq = GlacierSequence(
        train, batch_size=settings["batch_size"], crop=effective_crop(settings["crop"], tile_shape),
        augment=None if settings["no_aug"] else AugmentConfig(), shuffle=True, seed=settings["seed"], **common)
    val_seq = GlacierSequence(
        val, batch_size=settings["batch_size"], crop=effective_crop(None, tile_shape), augment=None,
        shuffle=False, seed=settings["seed"], **common)
    return train_seq, val_seq


def best_so_far(csv_path: Path, key: str = "val_mcc") -> float | None:
    """Best value of ``key`` in a CSV log, so a resumed run does not overwrite a better best.keras."""
    from keras_glacier.callbacks import read_history

    values = [v for v in (read_history(csv_path) or {}).get(key, []) if v == v]  # drop NaN
    return max(values) if values else None


def make_callbacks(settings: dict, run_dir: Path, train_seq, val_seq, stats, resume: bool):
    import keras

    from keras_glacier.callbacks import FigureWriter
    from keras_glacier.data.dataset import EpochSync

    preview = [val_seq.load(i) for i in range(min(3, len(val_seq.samples)))]
    csv_log = run_dir / "history.csv"
    best = best_so_far(csv_log) if resume else None
    return [
        EpochSync(train_seq, val_seq),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor="val_mcc", mode="max",
                                        save_best_only=True, initial_value_threshold=best),
        keras.callbacks.EarlyStopping(monitor="val_mcc", mode="max", patience=settings["patience"],
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(str(csv_log), append=resume),
        FigureWriter(run_dir, np.stack([p[0] for p in preview]), np.stack([p[1] for p in preview]),
                     stats.lo, stats.hi, csv_log=csv_log),
    ]


def build_model(settings: dict, stats, num_bands: int):
    from keras_glacier.model import build_deeplab

    model = build_deeplab(num_bands=num_bands, stats=stats.to_dict())
    if settings["pretrained"] is not None:
        from convert import load_torchvision_resnet34

        load_torchvision_resnet34(settings["pretrained"], model)
    return model


def save_model(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict:
    """The whole job; returns the final validation metrics (and paths) for callers such as the notebook."""
    import keras

    from keras_glacier.callbacks import FigureWriter

    run_dir = choose_run_dir(args)
    saved = json.loads((run_dir / "config.json").read_text()) if args.resume else None
    settings = resolve_settings(args, saved)
    run_dir.mkdir(parents=True, exist_ok=True)
    devices = set_up_devices(settings)

    source, bands, train, val, stats, tile_shape = prepare_data(settings, run_dir, args.resume)
    write_json(run_dir / "config.json", {**settings, "bands_used": list(bands), "data_kind": source.kind,
                                         "devices": devices, "keras_version": keras.__version__,
                                         "backend": keras.backend.backend()})
    train_seq, val_seq = make_datasets(settings, run_dir, train, val, stats, bands, tile_shape)
    print(f"data: {source.kind} at {source.root}: {len(train)} training and {len(val)} validation tiles "
          f"({len({s.scene_id for s in train})} / {len({s.scene_id for s in val})} scenes), bands {list(bands)}, "
          f"tile {tile_shape[0]}x{tile_shape[1]}, run folder {run_dir}", flush=True)

    model = build_model(settings, stats, len(bands))
    params = model.count_params()
    print(f"model: {model.name}, {params / 1e6:.2f}M parameters ({params * 4 / 1e6:.1f} MB as float32), "
          f"precision {settings['precision']}, {devices} device(s), backend {keras.backend.backend()}", flush=True)
    compile_model(model, settings, len(train_seq))
    callbacks = make_callbacks(settings, run_dir, train_seq, val_seq, stats, args.resume)
    model.fit(train_seq, validation_data=val_seq, epochs=settings["epochs"], callbacks=callbacks,
              verbose=2 if not sys.stdout.isatty() else "auto")

    best_path = run_dir / "best.keras"
    if best_path.exists():
        # Same architecture, so loading weights into the compiled model reuses its compiled functions.
        model.load_weights(best_path)
    save_model(model, run_dir / "model.keras")
    scores = model.evaluate(val_seq, verbose=0, return_dict=True)
    metrics = {key: float(scores[key]) for key in ("mcc", "iou", "f1", "precision", "recall", "r2", "loss")}
    write_json(run_dir / "metrics.json", metrics)
    print_table(f"validation ({len(val)} tiles, whole-set confusion matrix, best epoch's model)", metrics)
    figures = next(c for c in callbacks if isinstance(c, FigureWriter))
    figures.write_predictions()

    result = {"run_dir": str(run_dir), "metrics": metrics, "model": str(run_dir / "model.keras")}
    if not settings["no_export"]:
        from convert import convert_model

        report = convert_model(model, run_dir / "model.pth")
        print(report.summary())
        result["model_pth"] = str(run_dir / "model.pth")
        result["conversion"] = report
    return result


def main(argv: list[str] | None = None, restart: bool = False) -> int:
    """Runs the training job; ``restart`` (the command line) may first re-exec under ``--malloc``."""
    args = build_parser().parse_args(argv)
    if restart:
        restart_with_allocator(args.malloc, "keras_glacier.train", sys.argv[1:] if argv is None else list(argv))
    try:
        run(args)
    except (UsageError, ValueError) as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def is_user_error(exc: BaseException) -> bool:
    """Errors about the user's files and flags, as opposed to bugs (which keep their traceback)."""
    from keras_glacier.data.errors import InputError

    if isinstance(exc, (UsageError, InputError)):
        return True
    try:
        from convert import ConversionInputError
    except ImportError:  # pragma: no cover - convert ships with the package
        return False
    return isinstance(exc, ConversionInputError)


if __name__ == "__main__":
    sys.exit(main(restart=True))
