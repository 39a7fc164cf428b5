"""The rooms of the design keep to what they may import (see README, "Code layout")."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize(
    "package", ["keras_glacier", "keras_glacier.model", "keras_glacier.xla_cpu", "keras_glacier.losses",
                "keras_glacier.metrics", "keras_glacier.accelerator"]
)
def test_model_side_does_not_import_torch(package):
    assert "torch" not in modules_after_import(f"import {package}")


def imported_modules(folder: str, top_level_only: bool = False) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports (read from the source): anywhere, including
    inside functions, or with ``top_level_only`` only when the module itself is imported."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree)
        if top_level_only:  # module-level statements, also inside module-level if/try blocks
            nodes = [n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef | ast.ClassDef)
                     for n in ast.walk(stmt)]  # fmt: skip
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(REPO))] = names
    return found


def _torch_side(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in {"torch", "torchvision", "solution"}}


@pytest.mark.parametrize("folder", ["keras_glacier/model", "keras_glacier/xla_cpu"])
def test_model_and_kernels_never_import_torch(folder):
    files = imported_modules(folder)
    assert files, f"no Python files under {folder}"
    for path, names in files.items():
        assert not _torch_side(names), path


def test_data_imports_torch_only_lazily():
    """The data room reaches solution.py's band-folder helpers (which import torch) on first use only."""
    for path, names in imported_modules("keras_glacier/data", top_level_only=True).items():
        assert not _torch_side(names), path


def test_xla_cpu_knows_nothing_of_the_model():
    """The kernels are a platform room: they import jax, keras and themselves, never the model or other rooms."""
    for path, names in imported_modules("keras_glacier/xla_cpu").items():
        ours = {name for name in names if name.split(".")[0] == "keras_glacier"}
        assert all(name.startswith("keras_glacier.xla_cpu") for name in ours), (path, ours)


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
