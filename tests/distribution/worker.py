"""One process of the multi-process test (run as ``python -m tests.distribution.worker``).

Trains the real model for a few steps through the real loader (GlacierSequence wrapped in
ProcessShard) on a demo dataset, then evaluates, and writes its weights and metrics to
``<out>/process_<i>.npz`` so the test can compare a 2-process run with a 1-process run. The device
count per process comes from XLA_FLAGS (set by the test before this interpreter starts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--train-tiles", type=int, default=8)
    parser.add_argument("--val-tiles", type=int, default=6)
    args = parser.parse_args(argv)

    from keras_glacier import distribution

    try:
        info = distribution.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.timeout)
        distribution.check_global_batch(args.batch)
    except distribution.DistributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import keras

    from keras_glacier.data import compute_stats, discover
    from keras_glacier.data.dataset import EpochSync, GlacierSequence
    from keras_glacier.losses import BceDiceLoss
    from keras_glacier.metrics import segmentation_metrics
    from keras_glacier.model import build_deeplab

    keras.utils.set_random_seed(0)
    distribution.check_same_everywhere(vars(args) | {"process_id": None}, "settings")
    distribution.set_data_parallel()
    source = discover(args.data)
    bands = source.default_bands
    samples = source.samples
    train, val = samples[: args.train_tiles], samples[args.train_tiles : args.train_tiles + args.val_tiles]
    stats = compute_stats(train, bands)
    train_seq = GlacierSequence(train, stats, bands, batch_size=args.batch, shuffle=True, seed=3, workers=1)
    val_seq = GlacierSequence(val, stats, bands, batch_size=args.batch, shuffle=False, seed=3, workers=1)
    model = build_deeplab(num_bands=len(bands), stats=stats.to_dict(), encoder="resnet18")  # compiles sooner than 34
    # SGD, not Adam: Adam's first steps are sign(gradient) * lr, so float summation-order noise in a
    # near-zero gradient flips a whole step; SGD keeps differences as small as the gradients'.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=BceDiceLoss(), metrics=segmentation_metrics(),
                  jit_compile=True)
    initial = [np.array(w) for w in model.get_weights()]
    # Before training: same weights everywhere, and inference has no cross-device reduction, so these
    # scores must agree exactly between runs; they show the confusion counts are summed over processes.
    before = model.evaluate(distribution.ProcessShard(val_seq), verbose=0, return_dict=True,
                            callbacks=[distribution.SynchronousSteps()])
    history = model.fit(distribution.ProcessShard(train_seq), validation_data=distribution.ProcessShard(val_seq),
                        epochs=1, steps_per_epoch=args.steps, shuffle=False, verbose=0,
                        callbacks=[EpochSync(train_seq, val_seq), distribution.SynchronousSteps()])
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    out = Path(args.out)
    np.savez(out / f"process_{info.process_index}.npz", *[np.asarray(w) for w in model.get_weights()])
    np.savez(out / f"process_{info.process_index}_init.npz", *initial)
    (out / f"process_{info.process_index}.json").write_text(json.dumps(
        {"logs": logs, "before": {key: float(value) for key, value in before.items()},
         "process_count": info.process_count, "devices": info.global_devices,
         "local_devices": info.local_devices, "how": info.how}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
