"""Training-step speed: jit-compiled Keras+JAX (what ``fit`` runs) vs the PyTorch twin in eager mode.

The Keras side is the real training configuration of ``keras_glacier.train``: ``build_deeplab``
compiled with ``jit_compile=True``, ``BceDiceLoss``, ``AdamW`` and the segmentation metrics, stepped
with ``train_on_batch``, which runs the same jitted ``make_train_function`` step that ``fit`` does
(state donated, metrics updated). The first call traces and compiles; it is reported on its own as
``compile_s``. The PyTorch side is ``solution.AttentionDeepLabV3Plus`` in train mode with the same
loss written in torch and ``torch.optim.AdamW``, in NCHW and in channels_last memory format.

Each contender (Keras, torch NCHW, torch channels_last) runs alone in a fresh process, as a training
job would, and the contenders take turns for a few rounds, so slow drifts of a shared machine hit all
of them alike; ``--same-process`` instead alternates them step by step in this process, where they
share glibc's arena and the caches (which cost the Keras step 5-15 % here, with page faults). The
table gives medians and Keras / torch ratios.

On a GPU (``jax.devices()[0].platform == "gpu"``) the same code runs on the device; with
``--precision mixed_bfloat16`` Keras uses that policy and torch autocasts to bfloat16. The FLOPs of
one training step come from XLA's cost analysis of the lowered (unoptimised) train step, so they
count the model's arithmetic whatever kernels the backend picks; model FLOP utilisation is reported
when the device's peak is known (see ``PEAK_FLOPS``).

    python -m benchmarks.train_step                  # 4x256 and 2x512
    python -m benchmarks.train_step --quick          # tiny settings, seconds
    python -m benchmarks.train_step --settings 2x256 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np

import keras_glacier  # noqa: F401  (selects the JAX backend before keras is imported)
from benchmarks.common import (
    ALLOCATORS,
    allocator_description,
    interleaved,
    load_average,
    markdown_table,
    median,
    restart_with_allocator,
    spread,
    timed,
)
from convert.parity import PROBE_STATS as STATS
from keras_glacier.constants import IGNORE_INDEX
from keras_glacier.fileio import write_json

DEFAULT_SETTINGS = ((4, 256), (2, 512))
QUICK_SETTINGS = ((2, 64),)  # batch >= 2: torch BatchNorm rejects one value per channel (ASPP pool)
NUM_BANDS = 5
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-4
ALPHA = 0.5  # BceDiceLoss default

#: Dense peak FLOP/s per device kind (substring match, case-insensitive) and precision, for MFU.
PEAK_FLOPS = {
    "h200": {"float32": 67e12, "mixed_bfloat16": 989e12},
    "h100": {"float32": 67e12, "mixed_bfloat16": 989e12},
    "a100": {"float32": 19.5e12, "mixed_bfloat16": 312e12},
    "l4": {"float32": 30e12, "mixed_bfloat16": 121e12},
    "v100": {"float32": 15.7e12, "mixed_bfloat16": None},
}


def parse_setting(text: str) -> tuple[int, int]:
    """``"4x256"`` -> (batch 4, crop 256)."""
    try:
        batch, crop = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected BATCHxCROP like 4x256, got {text!r}") from exc
    if batch < 1 or crop < 16 or crop % 16:
        raise argparse.ArgumentTypeError(f"{text!r}: batch must be >= 1 and crop a multiple of 16")
    return batch, crop


def make_batch(batch: int, crop: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw bands (B, H, W, 5) across each band's range and labels with glacier blobs and ignored pixels."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array(STATS["lo"], np.float32), np.array(STATS["hi"], np.float32)
    x = (lo + rng.random((batch, crop, crop, NUM_BANDS), dtype=np.float32) * (hi - lo)).astype(np.float32)
    yy, xx = np.mgrid[0:crop, 0:crop] / crop
    blobs = np.sin(7 * yy + rng.random()) * np.cos(5 * xx + rng.random()) > 0.2
    y = np.broadcast_to(blobs, (batch, crop, crop)).astype(np.float32).copy()
    y[:, : crop // 8] = IGNORE_INDEX  # a strip outside the region mask
    return x, y[..., None]


# --------------------------------------------------------------------------------------------- Keras


def build_keras_trainer(precision: str = "float32", metrics: bool = True, encoder: str = "resnet34"):
    """The model compiled exactly as ``keras_glacier.train.compile_model`` does (constant learning rate)."""
    import keras

    from keras_glacier.losses import BceDiceLoss
    from keras_glacier.metrics import segmentation_metrics
    from keras_glacier.model import build_deeplab

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_deeplab(num_bands=NUM_BANDS, stats=STATS, encoder=encoder)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        loss=BceDiceLoss(alpha=ALPHA),
        metrics=segmentation_metrics() if metrics else None,
        jit_compile=True,
    )
    return model


def keras_step(model, x, y):
    """One ``fit`` step; ``train_on_batch`` returns Python floats, so the step has finished on return."""
    return lambda: model.train_on_batch(x, y)


def train_step_flops(model, x, y) -> float | None:
    """FLOPs of one jitted training step from XLA's cost analysis (None when the backend gives none)."""
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    try:
        analysis = jax.jit(model.train_step).lower(state, (x, y, None)).cost_analysis()
    except Exception:  # noqa: BLE001  (cost analysis is optional diagnostics, backend-dependent)
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


# --------------------------------------------------------------------------------------------- torch


def torch_bce_dice(logits, target_with_ignore, alpha: float = ALPHA, smooth: float = 1.0):
    """``keras_glacier.losses.BceDiceLoss`` written in torch (masked BCE + batch soft Dice)."""
    import torch

    logits = logits.float()
    valid = target_with_ignore != IGNORE_INDEX
    target = torch.where(valid, target_with_ignore, torch.zeros_like(target_with_ignore))
    bce = torch.relu(logits) - logits * target + torch.log1p(torch.exp(-logits.abs()))
    bce = torch.where(valid, bce, torch.zeros_like(bce)).sum() / valid.sum().clamp(min=1)
    prob = torch.where(valid, torch.sigmoid(logits), torch.zeros_like(logits))
    dice = 1 - (2 * (prob * target).sum() + smooth) / (prob.sum() + target.sum() + smooth)
    return alpha * bce + (1 - alpha) * dice


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_torch_trainer(channels_last: bool, device, encoder: str = "resnet34"):
    import torch

    import solution

    model = solution.AttentionDeepLabV3Plus(in_channels=NUM_BANDS, encoder=encoder)
    with torch.no_grad():
        for name in ("lo", "hi", "mean", "std"):
            getattr(model.normalize, name).copy_(torch.tensor(STATS[name]))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    return model, optimizer


def torch_step(model, optimizer, x, y, channels_last: bool, device, precision: str):
    """One eager training step; ``loss.item()`` waits for the device."""
    import torch

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(y.transpose(0, 3, 1, 2).copy()).to(device)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    autocast = precision == "mixed_bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xt)
        loss = torch_bce_dice(logits, yt)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# --------------------------------------------------------------------------------------------- driver


class FaultCounter:
    """Wraps a step and counts the minor page faults of the process during each call."""

    def __init__(self, fn):
        self.fn, self.faults = fn, []

    def __call__(self):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result = self.fn()
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return result

    @property
    def per_call(self) -> float:
        """Median over calls (the first calls also fault while the heap grows)."""
        return median(self.faults) if self.faults else 0.0


def _peak(device_kind: str, precision: str) -> float | None:
    for key, peaks in PEAK_FLOPS.items():
        if key in device_kind.lower():
            return peaks.get(precision)
    return None


def run(
    settings=DEFAULT_SETTINGS,
    steps: int = 5,
    warmup: int = 1,
    precision: str = "float32",
    torch_formats=("nchw", "channels_last"),
    metrics: bool = True,
    flops: bool = True,
    seed: int = 0,
    isolate: bool = True,
    rounds: int = 2,
    encoder: str = "resnet34",
) -> list[dict]:
    """One row per (batch, crop) setting: median step seconds and tiles/s of each framework, and ratios.

    ``isolate`` (the default): each contender runs alone in a fresh process (``measure``), the
    contenders taking turns for ``rounds`` rounds of ``steps`` timed steps each, so neither framework's
    memory, allocator arena or caches disturb the other, as in a real training job, while slow
    drifts of the machine still hit all of them alike. Otherwise they alternate step by step in
    this process, ``steps`` steps each. ``warmup`` untimed steps follow the first call (which,
    for Keras, compiles and is reported on its own as ``compile_s``).
    """
    import jax

    device = torch_device()
    jax_device = jax.devices()[0]
    rows = []
    for batch, crop in settings:
        load_before = load_average()
        names = ["keras"] + [f"torch_{fmt}" for fmt in torch_formats]
        if isolate:
            results = {name: [] for name in names}
            for round_index in range(rounds):
                for name in names:
                    want_flops = flops and name == "keras" and round_index == 0
                    results[name].append(
                        _measure_in_process(name, batch, crop, steps, warmup, precision, metrics, want_flops, seed,
                                            encoder)
                    )
            samples = {name: [s for r in results[name] for s in r["seconds"]] for name in names}
            faults = {name: median([f for r in results[name] for f in r["faults"]]) for name in names}
            compile_s = median([r["compile_s"] for r in results["keras"]])
            step_flops = results["keras"][0].get("flops")
        else:
            x, y = make_batch(batch, crop, seed)
            model = build_keras_trainer(precision, metrics, encoder)
            compile_s, _ = timed(keras_step(model, x, y))
            contenders = {"keras": FaultCounter(keras_step(model, x, y))}
            for fmt in torch_formats:
                channels_last = fmt == "channels_last"
                tmodel, optimizer = build_torch_trainer(channels_last, device, encoder)
                step = torch_step(tmodel, optimizer, x, y, channels_last, device, precision)
                contenders[f"torch_{fmt}"] = FaultCounter(step)
            samples = interleaved(contenders, rounds=steps, warmup=warmup)
            faults = {name: counter.per_call for name, counter in contenders.items()}
            step_flops = train_step_flops(model, x, y) if flops else None
            del model, contenders
        keras_s = median(samples["keras"])
        row = {
            "batch x crop": f"{batch}x{crop}",
            "encoder": encoder,
            "precision": precision,
            "compile_s": compile_s,
            "keras_s": keras_s,
            "keras_tiles_s": batch / keras_s,
        }
        for fmt in torch_formats:
            seconds = median(samples[f"torch_{fmt}"])
            row[f"torch_{fmt}_s"] = seconds
            row[f"keras/torch_{fmt}"] = keras_s / seconds
        row["noise"] = max(spread(s) for s in samples.values())
        row["page_faults_keras/torch"] = "/".join(f"{faults[name] / 1e3:.0f}k" for name in names)
        if step_flops:
            row["step_gflop"] = step_flops / 1e9
            row["keras_tflop_s"] = step_flops / keras_s / 1e12
            peak = _peak(jax_device.device_kind, precision)
            row["mfu"] = step_flops / keras_s / peak if peak else None
        row["load"] = f"{load_before} -> {load_average()}"
        row["device"] = f"jax {jax_device.platform}, torch {device.type}"
        row["timing"] = (f"own process each, {rounds} round{'s' if rounds != 1 else ''}" if isolate
                         else "alternating in one process")
        rows.append(row)
    return rows


def measure(name: str, batch: int, crop: int, steps: int, warmup: int, precision: str = "float32",
            metrics: bool = True, flops: bool = False, seed: int = 0, encoder: str = "resnet34") -> dict:  # fmt: skip
    """Times one contender alone: seconds and minor page faults of ``steps`` steps after ``warmup``."""
    x, y = make_batch(batch, crop, seed)
    result: dict = {"compile_s": None}
    if name == "keras":
        model = build_keras_trainer(precision, metrics, encoder)
        result["compile_s"], _ = timed(keras_step(model, x, y))
        counter = FaultCounter(keras_step(model, x, y))
        if flops:
            result["flops"] = train_step_flops(model, x, y)
    elif name in ("torch_nchw", "torch_channels_last"):
        device = torch_device()
        channels_last = name == "torch_channels_last"
        tmodel, optimizer = build_torch_trainer(channels_last, device, encoder)
        counter = FaultCounter(torch_step(tmodel, optimizer, x, y, channels_last, device, precision))
    else:
        raise ValueError(f"unknown contender {name!r}")
    for _ in range(warmup):
        counter()
    counter.faults.clear()
    result["seconds"] = [timed(counter)[0] for _ in range(steps)]
    result["faults"] = counter.faults
    return result


WORKER_PREFIX = "train_step worker result: "


def _measure_in_process(name, batch, crop, steps, warmup, precision, metrics, flops, seed, encoder) -> dict:
    """``measure`` in a fresh ``python -m benchmarks.train_step --worker`` (same environment, so same allocator)."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", name, "--settings", f"{batch}x{crop}",
               "--steps", str(steps), "--warmup", str(warmup), "--precision", precision,
               "--seed", str(seed), "--encoder", encoder]  # fmt: skip
    if not metrics:
        command.append("--no-metrics")
    if not flops:
        command.append("--no-flops")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(WORKER_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {name} {batch}x{crop} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len(WORKER_PREFIX) :])


NOTES = (
    "Median seconds per training step (forward, loss, backward, AdamW update); tiles/s = batch / step. "
    "keras: jit-compiled `train_on_batch` (the step `fit` runs, BceDiceLoss + AdamW + segmentation metrics); "
    "compile_s: its first call (trace + XLA compile + one step). torch: solution.AttentionDeepLabV3Plus eager, "
    "train mode, same loss in torch, AdamW. timing: each contender alone in its own process, the contenders "
    "taking turns (or, with --same-process, alternating step by step in one process); "
    "noise = largest half-range / median of any contender. page_faults: minor page faults per step (Keras, then "
    "each torch format), i.e. freshly mapped memory touched; see `--malloc`. step_gflop: XLA cost analysis of the "
    "lowered train step (includes backward and optimizer); mfu only where the device's peak is known."
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings",
        type=parse_setting,
        nargs="+",
        default=None,
        help="BATCHxCROP settings to time (default 4x256 2x512; --quick: 2x64)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per contender (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per contender after compiling (default 1)")
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="Keras dtype policy; torch autocasts to bfloat16 for mixed_bfloat16 (default float32)",
    )
    parser.add_argument(
        "--torch-formats",
        nargs="+",
        choices=("nchw", "channels_last"),
        default=["nchw", "channels_last"],
        help="torch memory formats to compare (default both)",
    )
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="compile Keras without the segmentation metrics (to see what they cost)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the XLA cost analysis of the step")
    parser.add_argument("--malloc", choices=ALLOCATORS, default=None,
                        help="'reuse': restart this benchmark with glibc set to keep freed memory "
                             "(keras_glacier.memory.REUSE_MEMORY_ENV); default: as started")  # fmt: skip
    parser.add_argument("--same-process", action="store_true",
                        help="alternate the contenders step by step in this process instead of running each "
                        "alone in its own process (they then share the allocator and caches)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="turns each contender takes, in a fresh process each, when isolated (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch (default 0)")
    parser.add_argument("--encoder", choices=("resnet18", "resnet34"), default="resnet34",
                        help="the network's encoder (default resnet34)")
    parser.add_argument("--worker", default=None, choices=("keras", "torch_nchw", "torch_channels_last"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny settings and few steps (a smoke run)")
    args = parser.parse_args(argv)
    if args.malloc:
        restart_with_allocator(args.malloc, "benchmarks.train_step", sys.argv[1:] if argv is None else list(argv))
    allocator = allocator_description()
    settings = args.settings or (QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS)
    steps = args.steps or (2 if args.quick else 5)
    if args.worker:  # one contender alone, for an isolated run (see run)
        (batch, crop), = settings
        result = measure(args.worker, batch, crop, steps, args.warmup, args.precision, not args.no_metrics,
                         not args.no_flops, args.seed, args.encoder)  # fmt: skip
        print(WORKER_PREFIX + json.dumps(result), flush=True)
        return [result]
    rows = run(settings, steps=steps, warmup=args.warmup, precision=args.precision,
               torch_formats=tuple(args.torch_formats), metrics=not args.no_metrics,
               flops=not args.no_flops, seed=args.seed, isolate=not args.same_process,
               rounds=1 if args.quick else args.rounds, encoder=args.encoder)  # fmt: skip
    for row in rows:
        row["allocator"] = allocator
    if args.json:
        write_json(args.json, rows)
    print(markdown_table(rows))
    print()
    print(NOTES)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
