"""The rooms of the design keep to what they may import (see README, "Code layout")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def modules_after_import(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {name.split(".")[0] for name in done.stdout.split()}


def test_solution_needs_only_torch_numpy_tifffile_tqdm():
    loaded = modules_after_import("import solution")
    assert not loaded & {"keras", "jax", "keras_glacier", "convert", "albumentations", "matplotlib"}


@pytest.mark.parametrize("package", ["keras_glacier.model", "keras_glacier.losses", "keras_glacier.metrics"])
def test_model_side_does_not_import_torch(package):
    assert "torch" not in modules_after_import(f"import {package}")


def test_reading_npy_slices_does_not_import_torch(tmp_path):
    statement = (
        "from keras_glacier.data import make_demo_dataset, discover, read_sample, compute_stats\n"
        f"root = make_demo_dataset({str(tmp_path)!r}, scenes=1, tiles_per_scene=1, size=16)\n"
        "source = discover(root)\n"
        "read_sample(source.samples[0], source.default_bands)\n"
        "compute_stats(source.samples, source.default_bands)"
    )
    assert "torch" not in modules_after_import(statement)


def test_one_pytorch_definition():
    """The network's PyTorch classes live in solution.py only; convert imports them from there."""
    for path in [*REPO.glob("keras_glacier/**/*.py"), *REPO.glob("convert/*.py"), *REPO.glob("benchmarks/*.py")]:
        text = path.read_text()
        assert "(nn.Module)" not in text and "torch.nn.Module)" not in text, path
