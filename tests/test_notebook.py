"""notebooks/train_colab.ipynb: a thin driver of the package that runs top to bottom.

The end-to-end test executes every cell in a fresh Jupyter kernel of this interpreter, on the demo
data with tiny settings, as Colab would (settings overridden after the ``parameters`` cell, the
way papermill does it).
"""

import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_colab.ipynb"
KERNEL_NAME = "keras-glacier-test"
MODEL_CODE = ("keras.layers", "keras.Model(", "nn.Module", "torch.nn", "def ", "class ", "lambda ")

TINY = {"EPOCHS": 1, "BATCH_SIZE": 2, "CROP": 64, "DEMO_TILES": 8, "DEMO_SIZE": 64, "WORKERS": 1, "PATIENCE": 1,
        "SAMPLES_PER_EPOCH": 4}


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_notebook_is_valid_and_holds_no_model_code():
    nb = read_notebook()
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert [cell.metadata.get("tags") for cell in cells].count(["parameters"]) == 1
    assert all(not cell.get("outputs") and cell.execution_count is None for cell in cells)  # committed clean
    for cell in cells:
        for pattern in MODEL_CODE:
            assert pattern not in cell.source, f"code cell defines logic ({pattern!r}):\n{cell.source}"
    source = "\n".join(cell.source for cell in cells)
    for call in ("TrainConfig(", "keras_glacier.train(config", "evaluate.evaluate(", "keras_glacier.convert_model(",
                 "solution.maskgeration(", "export_band_folders("):
        assert call in source
    assert "build_parser" not in source and '"--' not in source, "the Python API, not command-line strings"


def test_install_cell_is_guarded_and_names_the_accelerator_builds():
    install = next(cell.source for cell in code_cells(read_notebook()) if "%pip install" in cell.source)
    assert install.startswith("if INSTALL:")
    assert '"jax[tpu]"' in install and '"jax[cuda12]"' in install


@pytest.fixture(scope="module")
def kernel_spec_dir(module_tmp):
    """A kernel spec that launches this very interpreter, found before any user-wide 'python3'."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = module_tmp("jupyter")
    install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    data_dir = prefix / "share" / "jupyter"
    spec = KernelSpecManager(kernel_dirs=[str(data_dir / "kernels")]).get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable
    return data_dir


def test_notebook_runs_top_to_bottom_on_demo_data(tmp_path, kernel_spec_dir, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_spec_dir))
    nb = read_notebook()
    run_dir = tmp_path / "run"
    overrides = {**TINY, "RUN_DIR": str(run_dir)}
    position = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(position + 1, injected)

    # Like Jupyter: the kernel starts in the notebook's folder (REPO_DIR defaults to its parent).
    NotebookClient(nb, timeout=600, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()

    cells = code_cells(nb)
    assert all(cell.execution_count is not None for cell in cells)
    errors = [out for cell in cells for out in cell.outputs if out.output_type == "error"]
    assert not errors
    stderr = "".join(out.text for cell in cells for out in cell.outputs
                     if out.output_type == "stream" and out.name == "stderr")
    assert "Warning" not in stderr, stderr

    model_pth = run_dir / "model.pth"
    assert model_pth.is_file() and 50e6 < model_pth.stat().st_size < 200e6
    assert {"curves.png", "predictions.png", "model.keras", "split.json"} <= {p.name for p in run_dir.iterdir()}

    def text_of(call):
        cell = next(cell for cell in cells if call in cell.source)
        return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")

    table = text_of("evaluate.evaluate(DATA_ROOT")
    assert "mcc" in table and "tta " in table and "no_tta" in table and "4 tiles (val)" in table
    parity = text_of("convert_model(")
    assert "verified against Keras" in parity and "limit 200 MB" in parity
    submission = text_of("solution.maskgeration(")
    assert "solution.py wrote 4 masks" in submission and "mcc" in submission and "pred " in submission
    assert len(list((run_dir / "solution_masks").glob("tile_*.tif"))) == 4
    images = [out for cell in cells for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3  # curves, predictions, worst tiles
