"""The multi-class task end to end on HKH-release data: float64 slices with NaN, one-hot masks, K-logit
head, class names and values in the run, the model and model.pth, and solution.py writing phase-2 values.

The one run is a ``--refit`` run (one training job for both): its validated run is an ordinary multi-class
run, and the refit on every tile must keep deciding by the argmax (no threshold to carry)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

import keras_glacier
from keras_glacier import TrainConfig
from keras_glacier.data.demo import make_demo_dataset
from keras_glacier.training.run_folder import VALIDATION_RUN

HKH_NAMES = ["background", "clean_ice", "debris"]


@pytest.fixture(scope="module")
def multiclass_run(module_tmp):
    root = module_tmp("hkh")
    data = make_demo_dataset(root / "slices", scenes=3, tiles_per_scene=2, size=32, mask_layout="onehot",
                             dtype=np.float64)
    config = TrainConfig(data=str(data), out=str(root / "run"), task="multiclass", epochs=1, batch_size=2,
                         workers=1, samples_per_epoch=4, class_weights="auto", refit=True, refit_epochs=2)
    return data, keras_glacier.train(config)


@pytest.mark.parametrize("folder", [VALIDATION_RUN, "."])
def test_the_run_model_and_export_know_their_classes(multiclass_run, folder):
    data, result = multiclass_run
    run = (result.run_dir / folder).resolve()
    facts = json.loads((run / "run.json").read_text())
    assert facts["class_names"] == HKH_NAMES and facts["class_values"] == [0, 85, 170]
    assert facts["mask_layout"] == "onehot" and facts["label_fractions"]["debris"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mcc", "mean_iou", "iou_debris"} <= set(metrics) and -1 <= metrics["mcc"] <= 1
    model = keras_glacier.Segmenter.from_run(run).model
    assert model.get_config()["class_names"] == HKH_NAMES and model.outputs[0].shape[-1] == 3


def test_a_multiclass_refit_keeps_the_argmax_and_exports_its_classes(multiclass_run):
    """No threshold to carry: the refitted K-class network decides by its most probable class."""
    _, result = multiclass_run
    facts = json.loads((result.run_dir / "run.json").read_text())
    assert result.threshold is None and "threshold" not in facts and facts["refit_epochs"] == 2
    with open(result.run_dir / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2, "--refit-epochs 2 after a 1-epoch validated run"
    # Parity of the K-class head, within the export's float32 tolerance (1e-4 of the largest logit: this
    # two-epoch network's recomputed BatchNorm variances make its logits on the random probe reach thousands).
    conversion = result.conversion
    assert conversion is not None and conversion.max_abs_diff <= conversion.tolerance and conversion.mask_agreement == 1

    import solution

    torch_model = solution.load_model(result.run_dir / "model.pth", "cpu")
    assert torch_model.config["class_names"] == HKH_NAMES and torch_model.config["class_values"] == [0, 85, 170]


def test_solution_writes_phase2_values_for_the_three_hkh_classes(multiclass_run, tmp_path):
    import solution
    from keras_glacier.data import discover
    from keras_glacier.data.export import export_band_folders

    data, result = multiclass_run
    source = discover(data)
    bands = json.loads((result.run_dir / "run.json").read_text())["bands_used"]
    export_band_folders(source.samples[:2], bands, tmp_path / "bands")
    masks = solution.maskgeration(str(tmp_path / "bands"), tmp_path / "masks", weights=result.run_dir / "model.pth",
                                  progress=False)
    assert len(masks) == 2
    for path in (tmp_path / "masks").glob("*.tif"):
        assert set(np.unique(tifffile.imread(path)).tolist()) <= {0, 85, 170}
    assert all(set(np.unique(mask).tolist()) <= {0, 85, 170} for mask in masks.values())
