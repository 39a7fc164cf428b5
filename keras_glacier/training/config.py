"""``TrainConfig``: every training setting, its default, its check and its help text, in one place.

The command line (``python -m keras_glacier.train``) is derived from the fields: each field is one
flag whose name, type, choices and help come from the field and its metadata, so a setting cannot
exist in one and not the other (``tests/training/test_config.py`` asserts it). ``config.json`` in
a run folder is ``dataclasses.asdict(config)``; ``--resume`` rebuilds the config from it
(:meth:`TrainConfig.from_dict`), and files written by older versions (without the newer fields,
with ``no_aug``/``no_export`` and run facts such as ``bands_used``) keep loading.

This module imports neither keras nor numpy: ``keras_glacier.TrainConfig`` is cheap to use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_glacier.constants import AFFINE_PROBABILITY, ASPP_RATES, ENCODERS
from keras_glacier.errors import UsageError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TASKS = ("binary", "multiclass")
LOSSES = ("bce_dice", "focal", "tversky", "lovasz")
CLASS_WEIGHTS = ("none", "auto")
DISTRIBUTIONS = ("none", "data_parallel")
#: ``--bn-stats``: recomputed on the training tiles after training (keras_glacier.training.batchnorm), or
#: Keras' running averages of the training batches kept.
BN_STATS_TILES, BN_STATS_RUNNING = "tiles", "running"
BN_STATS = (BN_STATS_TILES, BN_STATS_RUNNING)
AUTO = "auto"
#: ``--refit-epochs best``: the validated run's best epoch count, nothing added.
BEST = "best"
#: ``--encoder`` values: auto (keras_glacier.data.sampling.auto_encoder) or an encoder name.
ENCODER_CHOICES = (AUTO, *ENCODERS)

#: Fields that ``--resume`` takes from the command line rather than from the saved config.json:
#: raising the epoch budget and changing the loader threads do not change what the run learns
#: from, so a resumed run stays the run it was.
RESUMABLE = ("epochs", "workers")

#: Keys of config.json files written before TrainConfig, mapped to their field.
_LEGACY_FLAGS = {"no_aug": "augment", "no_export": "export"}


def _setting(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
             metavar: str | None = None) -> Any:
    """A dataclass field with its command-line metadata (``help`` is shown by ``--help``)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """The settings of one training run (see ``python -m keras_glacier.train --help``).

    ``TrainConfig(epochs=20, crop=128)`` checks itself on creation (:meth:`check`) and raises
    :class:`keras_glacier.errors.UsageError` naming the flag of a wrong value. ``keras_glacier.train(config)``
    runs it; ``dataclasses.replace(config, seed=1)`` makes a variant.
    """

    data: str | None = _setting(
        None, "dataset folder: HKH slice_<i>_image_<j>.npy / slice_<i>_mask_<j>.npy files, or band folders "
        "Band1..BandN/*.tif with label/*.tif (detected). Absent: generate and train on the built-in synthetic "
        "demo scenes.", metavar="FOLDER")
    out: str | None = _setting(
        None, "run folder for model.keras, model.pth, stats.json, config.json, split.json, history.csv, "
        "curves.png, predictions.png (default: runs/demo or runs/<data folder name>, numbered -2, -3, ... "
        "when it already holds a finished run)", metavar="RUN_DIR")
    task: str = _setting(
        "binary", "binary: glacier vs background (GlacierHack phase 1); multiclass: one class per label value "
        "(clean ice / debris / lake, phase 2)", choices=TASKS)
    bands: str = _setting(
        "competition", "bands to train on: a preset (competition = B1,B2,B3,B5,B6_VCID1; seed; all), band names "
        "(B2,B3,B4) or 0-based channel numbers of the .npy slices (1,2,3,5,9); band-folder data uses all its "
        "band folders unless named", metavar="SPEC")
    mask_layout: str = _setting(
        AUTO, "layout of HKH .npy masks (auto: detected from the files)", metavar="LAYOUT")
    epochs: int = _setting(40, "maximum number of epochs; an epoch is --samples-per-epoch training crops")
    samples_per_epoch: int | None = _setting(
        None, "training crops per epoch, drawn from the tiles with probability proportional to their area "
        "(default: derived from the data, see keras_glacier.data.sampling; at least one per tile)", metavar="N")
    batch_size: int = _setting(
        4, "crops per step, at least 2: the global batch, summed over all devices (and processes) when data-parallel; "
        "then a multiple of the device count")
    crop: int = _setting(
        256, "random square crop for training, a multiple of 16; tiles no larger than it are used whole "
        "(use 512 on accelerators)")
    lr: float = _setting(1e-3, "peak AdamW learning rate (after a linear warm-up, then cosine decay)")
    weight_decay: float = _setting(1e-4, "AdamW weight decay")
    ema: float = _setting(
        0.0, "validate, checkpoint and export a moving average of the weights with this momentum (e.g. 0.99, "
        "ramped up over the first steps, see keras_glacier.training.optimizer); 0 = the raw weights",
        metavar="MOMENTUM")
    bn_stats: str = _setting(
        BN_STATS_TILES, "BatchNorm statistics of the saved network: tiles = recomputed after training on the training "
        "tiles, whole and un-augmented (at most 128 of them), instead of the running averages of the last "
        "augmented training batches; running = those running averages, as Keras keeps them (see "
        "keras_glacier.training.batchnorm)", choices=BN_STATS)
    encoder: str = _setting(
        AUTO, "the ResNet encoder: resnet18 (a step costs two thirds of a resnet34 step; small datasets get "
        "twice the steps per epoch with it) or resnet34; auto = resnet18 with fewer training tiles than a "
        "default epoch's least number of crops (batch x 8, as for --affine auto: everest-west's 9, "
        "GlacierHack's 25), else resnet34 (see keras_glacier.data.sampling.auto_encoder); stored in the model "
        "and model.pth",
        choices=ENCODER_CHOICES)
    aspp_rates: str = _setting(
        ",".join(map(str, ASPP_RATES)), "dilation rates of the ASPP's three 3x3 branches (comma-separated, "
        "DeepLabV3+'s by default); they act on features at 1/16 of the crop, so small tiles may want smaller "
        "rates (a 160-pixel tile has 10x10 features, where rates 12 and 18 reach only padding); stored in the "
        "model and model.pth",
        metavar="R1,R2,R3")
    loss: str = _setting(
        "bce_dice", "training loss: bce_dice (alpha * BCE + (1 - alpha) * Dice), focal, tversky or lovasz",
        choices=LOSSES)
    alpha: float = _setting(0.5, "weight of the cross-entropy in bce_dice: alpha * BCE + (1 - alpha) * Dice")
    class_weights: str = _setting(
        "none", "multiclass: per-class loss weights; auto = inverse square root of the training class "
        "frequencies (for rare classes such as debris)", choices=CLASS_WEIGHTS)
    val_fraction: float = _setting(
        0.2, "fraction of scenes held out for validation; split by scene, never by tile. 0: no validation, "
        "every labelled tile trains for all --epochs (its warm-up and cosine spanning them) and the last "
        "epoch's network is kept, deciding at 0.5 (or --threshold); for few tiles, where a held-out scene is "
        "a large share of what there is to learn from and --refit costs a second run (see "
        "keras_glacier.training.unvalidated)")
    folds: int = _setting(
        1, "train K scene-wise folds into RUN_DIR/fold-1 .. fold-K, each validating on its own scenes (1: one "
        "split by --val-fraction)", metavar="K")
    members: int = _setting(
        1, "train N networks on the same split that differ only in their seed (--seed, --seed + 1, ...) into "
        "RUN_DIR/member-1 .. member-N and keep their ensemble: RUN_DIR/model.keras averages their probabilities "
        "(its decision threshold chosen on the averaged validation probabilities) and model.pth packs all N, "
        "which solution.py averages; costs N runs' time", metavar="N")
    val_scenes: str | None = _setting(
        None, "validate on exactly these scenes (comma-separated scene ids, e.g. 03 or slice_2,slice_5; band-folder "
        "tile 02_07 is scene 02) instead of a random --val-fraction split", metavar="IDS")
    refit: bool = _setting(
        False, "after the run, train the network again on every labelled tile (training and validation) for the "
        "number of epochs that --refit-epochs derives from validation's best epoch (its warm-up and cosine "
        "spanning those epochs), with the same epoch size, and keep that network as the run's model.keras and "
        "model.pth, deciding at 0.5 (or --threshold: "
        "validation's choice was made for another network and one validation set); the validated run stays in "
        "RUN_DIR/validation-run and its scores are the run's metrics (the refitted network has seen the "
        "validation tiles, so nothing can score it honestly); with --members N every member is refitted and "
        "RUN_DIR/validation-run is the validated members' ensemble; costs up to twice the time")
    refit_epochs: str | int = _setting(
        AUTO, "epochs of the --refit network: best = the validated run's best epoch; auto = that, but at least "
        "three quarters of --epochs (a best epoch picked early on a few validation tiles is mostly noise, see "
        "keras_glacier.training.refit.refit_epoch_count); or a whole number",
        metavar="auto|best|N")
    seed: int = _setting(0, "seed of the split, sampling, augmentation, initialisation and demo data")
    threshold: str | float = _setting(
        AUTO, "binary decision threshold on the glacier probability: auto = the one with the best MCC on the "
        "validation tiles after training (stored in the model and model.pth; 0.5 for a --refit network and "
        "without validation), or a number in (0, 1)",
        metavar="auto|T")
    precision: str = _setting(
        AUTO, "keras dtype policy; auto = mixed_bfloat16 on TPUs and GPUs of compute capability 8.0 or newer, "
        "float32 elsewhere (keras_glacier.accelerator.auto_precision)", choices=PRECISIONS)
    distribute: str = _setting(
        "none", "data_parallel splits each batch over all devices (TPU cores, GPUs) with "
        "keras.distribution.DataParallel; a job of several processes (--coordinator) always does",
        choices=DISTRIBUTIONS)
    augment: bool = _setting(
        True, "turn off training augmentation (flips, 90-degree rotations, free rotation and zoom, "
        "brightness/contrast, noise)", flag="--no-aug")
    affine: str | float = _setting(
        AUTO, "probability that a training crop is also rotated by a random angle (up to 45 degrees) and zoomed "
        "by 0.75-1.33 (nearest-neighbour, reflected border): more distinct views of few tiles; auto = "
        f"{AFFINE_PROBABILITY} with fewer training tiles than a default epoch's least number of crops (batch x "
        "8: everest-west's 9, GlacierHack's 25), else 0 (see keras_glacier.data.sampling.auto_affine)",
        metavar="auto|P")
    cache: bool = _setting(
        False, "cache the selected bands of all tiles in one compact memmap in the run folder, so epochs after "
        "the first do not re-read the source files")
    pretrained: str | None = _setting(
        None, "initialise the encoder: 'imagenet' (torchvision's ImageNet weights of the run's encoder, ResNet-18 "
        "or ResNet-34, downloaded once into the torch hub cache and checked against their hash) or a "
        "torchvision-layout state dict (.pth) of that encoder; the 3-channel stem is adapted to the number of "
        "bands", metavar="imagenet|FILE")
    patience: int = _setting(10, "stop after this many epochs without a better validation MCC")
    workers: int = _setting(2, "loader threads")
    demo_tiles: int = _setting(64, "with no --data: number of demo tiles to generate")
    demo_size: int = _setting(128, "with no --data: height and width of the demo tiles")
    export: bool = _setting(True, "skip writing and verifying model.pth at the end", flag="--no-export")

    def __post_init__(self) -> None:
        for name in ("data", "out", "pretrained"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        if isinstance(self.val_scenes, (list, tuple)):
            self.val_scenes = ",".join(str(s) for s in self.val_scenes)
        if isinstance(self.aspp_rates, (list, tuple)):
            self.aspp_rates = ",".join(str(r) for r in self.aspp_rates)
        if isinstance(self.bands, (list, tuple)):  # channel numbers given as a sequence
            self.bands = ",".join(str(int(b)) for b in self.bands)
        self.threshold = parse_threshold(self.threshold)
        self.affine = parse_affine(self.affine)
        self.refit_epochs = parse_refit_epochs(self.refit_epochs)
        self.check()

    # ----------------------------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise UsageError for a value no run could use (files are checked by :meth:`check_paths`)."""
        positive = ("epochs", "batch_size", "patience", "workers", "demo_tiles", "demo_size", "folds", "members")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{flag_of(name)} must be a whole number of at least 1, got {value!r}")
        if self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2: the ASPP image-pool branch's BatchNorm normalises one "
                             "value per crop, so a batch of 1 gives it no variance and its statistics would blow up "
                             "every prediction")
        if self.samples_per_epoch is not None and (
                not isinstance(self.samples_per_epoch, int) or self.samples_per_epoch < 1):
            raise UsageError(f"--samples-per-epoch must be at least 1, got {self.samples_per_epoch!r}")
        if not isinstance(self.crop, int) or self.crop < 16 or self.crop % 16:
            raise UsageError(f"--crop must be a positive multiple of 16, got {self.crop}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must lie in [0, 1], got {self.alpha}")
        if isinstance(self.val_fraction, bool) or not (isinstance(self.val_fraction, (int, float))
                                                        and 0.0 <= self.val_fraction < 1.0):
            raise UsageError(f"--val-fraction must lie in [0, 1) (0: no validation), got {self.val_fraction!r}")
        if self.val_fraction == 0:
            self.check_without_validation()
        if self.val_scenes is not None:
            if not isinstance(self.val_scenes, str) or not scene_list(self.val_scenes):
                raise UsageError(f"--val-scenes needs comma-separated scene ids, got {self.val_scenes!r}")
            if self.folds > 1:
                raise UsageError("--val-scenes fixes one validation split; it cannot be combined with --folds")
        if self.refit and self.folds > 1:
            raise UsageError("--refit cannot be combined with --folds: it trains again on every labelled tile, "
                             "which leaves no folds apart; refit one split (with --members N for several seeds)")
        if self.folds > 1 and self.members > 1:
            raise UsageError("--members trains its networks on one split and --folds on several; give one of them "
                             "(or pack the folds' runs with python -m convert RUN_A RUN_B ...)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"--weight-decay must be zero or positive, got {self.weight_decay}")
        if not (isinstance(self.ema, (int, float)) and 0.0 <= self.ema < 1.0):
            raise UsageError(f"--ema must lie in [0, 1) (0 turns the weight average off), got {self.ema!r}")
        for name, choices in (("task", TASKS), ("loss", LOSSES), ("class_weights", CLASS_WEIGHTS),
                              ("encoder", ENCODER_CHOICES), ("bn_stats", BN_STATS),
                              ("precision", PRECISIONS), ("distribute", DISTRIBUTIONS)):
            if getattr(self, name) not in choices:
                raise UsageError(f"{flag_of(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        aspp_rates(self.aspp_rates)
        if not isinstance(self.bands, str) or not self.bands.strip():
            raise UsageError(f"--bands needs a preset, band names or channel numbers, got {self.bands!r}")
        if not isinstance(self.mask_layout, str) or not self.mask_layout.strip():
            raise UsageError(f"--mask-layout needs a layout name or auto, got {self.mask_layout!r}")
        if self.task == "multiclass" and self.threshold != AUTO:
            raise UsageError("--threshold applies to the binary task only (multiclass takes the most probable class)")
        if self.class_weights != "none" and self.task != "multiclass":
            raise UsageError("--class-weights applies to --task multiclass only")

    @property
    def validates(self) -> bool:
        """False for ``--val-fraction 0``: every labelled tile trains and nothing is held out."""
        return self.val_fraction > 0

    def check_without_validation(self) -> None:
        """``--val-fraction 0`` leaves nothing to validate on: refuse the flags that need validation tiles."""
        for given, flag, why in (
                (self.val_scenes is not None, f"--val-scenes {self.val_scenes}", "names validation scenes"),
                (self.folds > 1, f"--folds {self.folds}", "validates each fold on its own scenes"),
                (self.refit, "--refit", "trains again after a validated run; without validation every tile "
                 "already trains")):
            if given:
                raise UsageError(f"--val-fraction 0 trains without validation, but {flag} {why}: give one of them")

    def check_paths(self) -> None:
        """The files the config names exist (checked when a run starts, not on creation)."""
        if self.data is not None and not Path(self.data).exists():
            raise UsageError(f"--data {self.data}: no such folder")
        if self.pretrained not in (None, "imagenet") and not Path(self.pretrained).is_file():
            raise UsageError(f"--pretrained {self.pretrained}: no such file (or give 'imagenet')")

    # ------------------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict:
        """JSON-plain ``dataclasses.asdict``: what config.json holds."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict, source: str = "config") -> TrainConfig:
        """A config from a saved dict; older files (fewer fields, ``no_aug``, run facts) keep loading.

        Keys that are not fields (``bands_used``, ``devices``, versions: facts an older version kept
        in config.json) are ignored; a field whose saved value is wrong is a UsageError naming ``source``.
        """
        if not isinstance(saved, dict):
            raise UsageError(f"{source}: expected a JSON object of settings")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in saved.items() if key in names}
        for old, new in _LEGACY_FLAGS.items():
            if old in saved and new not in saved and saved[old] is not None:
                values[new] = not saved[old]
        if "affine" not in values:  # runs from before --affine turned crops by quarter turns only
            values["affine"] = 0.0
        if "refit_epochs" not in values:  # refit runs from before --refit-epochs trained the best epoch count
            values["refit_epochs"] = BEST
        if "bn_stats" not in values:  # runs from before --bn-stats kept the running averages
            values["bn_stats"] = BN_STATS_RUNNING
        if "encoder" not in values:  # runs from before --encoder had a ResNet-34
            values["encoder"] = "resnet34"
        if isinstance(values.get("bands"), list):  # channel numbers, as older runs saved them
            values["bands"] = ",".join(str(b) for b in values["bands"])
        if "bands" in saved and saved["bands"] is None:
            values["bands"] = "seed"  # older runs: None meant channels 1,2,3,5,9 of the slices (every band folder)
        if values.get("precision") is None:
            values.pop("precision", None)
        try:
            return cls(**values)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read the run's settings ({type(exc).__name__}: {exc})") from None
        return cls.from_dict(saved, source=str(path))

    @classmethod
    def from_run(cls, run_dir: str | Path) -> TrainConfig:
        """The config a run folder was trained with (its ``config.json``)."""
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise UsageError(f"{path} does not exist, so {run_dir} holds no run")
        return cls.from_json(path)

    def to_argv(self) -> list[str]:
        """The command-line flags that give this config (fields left at their default are omitted)."""
        argv = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            argv += [flag_of(f.name)] if isinstance(value, bool) else [flag_of(f.name), str(value)]
        return argv

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def aspp_rates(text: Any) -> tuple[int, int, int]:
    """The three ASPP dilation rates of ``--aspp-rates`` ("6,12,18"), each a whole number >= 1."""
    try:
        rates = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        rates = ()
    if len(rates) != 3 or min(rates) < 1:
        raise UsageError(f"--aspp-rates needs three whole numbers of at least 1, such as 6,12,18; got {text!r}")
    return rates


def _auto_or_number(value: Any, flag: str, kind: str, accepts: Callable[[float], bool], bounds: str) -> str | float:
    """``"auto"`` or a number that ``accepts`` (its UsageError names ``flag``)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} takes 'auto' or {kind}, got {value!r}") from None
    if not accepts(number):
        raise UsageError(f"{flag} must lie {bounds}, got {number}")
    return number


def parse_threshold(value: Any) -> str | float:
    """``--threshold``: ``"auto"`` or a float strictly between 0 and 1."""
    return _auto_or_number(value, "--threshold", "a number between 0 and 1", lambda t: 0.0 < t < 1.0,
                           "strictly between 0 and 1")


def parse_affine(value: Any) -> str | float:
    """``--affine``: ``"auto"`` or a probability in [0, 1]."""
    return _auto_or_number(value, "--affine", "a probability between 0 and 1", lambda p: 0.0 <= p <= 1.0,
                           "between 0 and 1")


def parse_refit_epochs(value: Any) -> str | int:
    """``--refit-epochs``: ``"auto"``, ``"best"`` or a whole number of at least 1."""
    if isinstance(value, str) and value.strip().lower() in (AUTO, BEST):
        return value.strip().lower()
    try:
        number = int(str(value).strip()) if not isinstance(value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise UsageError(f"--refit-epochs takes 'auto', 'best' or a whole number of at least 1, got {value!r}")
    return number


#: Fields given as a word (``auto``) or a number: their parser (argparse ``type=`` and field normaliser).
AUTO_OR_NUMBER = {"threshold": parse_threshold, "affine": parse_affine, "refit_epochs": parse_refit_epochs}


def scene_list(text: str) -> list[str]:
    """``"00, 03"`` -> ``["00", "03"]`` (the scene ids of ``--val-scenes``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def flag_of(name: str) -> str:
    """The command-line flag of field ``name`` (``batch_size`` -> ``--batch-size``; ``augment`` -> ``--no-aug``)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == name and f.metadata.get("flag"):
            return f.metadata["flag"]
    return "--" + name.replace("_", "-")


def defaults() -> dict:
    """Every field's default value, by name."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}
