"""Shared, session-scoped test data (generated once per test session, deterministic, small).

Fixtures (all read-only: copy into ``tmp_path`` before damaging or adding files):

``demo_npy_root``
    Path of an HKH-release-style demo dataset: 3 scenes x 4 tiles of 64x64, ``slice_<s>_img_<kkk>.npy``
    (64, 64, 15) float32 (published channel order) and ``slice_<s>_mask_<kkk>.npy`` (64, 64, 3) uint8
    0/1 (region layout), from ``make_demo_dataset(..., scenes=3, tiles_per_scene=4, size=64, seed=0)``.
    Scene ids ``slice_0``..``slice_2``; 4 tiles have NaN stripes (slice_0_img_000, slice_1_img_003,
    slice_2_img_000, slice_2_img_003), 7 are partly outside the HKH region (mask channel 2).
``demo_npy_source``
    ``discover(demo_npy_root)``: a ``DatasetSource`` with its 12 ``Sample`` records.
``demo_stats``
    ``BandStats`` of all 12 demo tiles for the default bands (preset competition: 0, 1, 2, 4, 5);
    ``.to_dict()`` gives the stats dict for the model.
``demo_tiff_root``
    Path of a GlacierHack-style band-folder dataset made by ``make_demo_band_folders(..., tiles=6,
    size=64, seed=0, with_labels=True)``: ``Band1/B2_B2_masked_<id>.tif`` ... ``Band5/B10_B10_masked_<id>.tif``
    (float32, same scenes as the npy demo, default bands; band names B2, B3, B4, B6, B10 from the
    prefixes) and ``label/Y_output_resized_<id>.tif``
    (uint8 0/255); ids ``00_00``..``00_02``, ``01_00``..``01_02`` (2 scenes of 3 tiles).
``demo_tiff_source``
    ``discover(demo_tiff_root)``.

``module_tmp`` (module-scoped) makes folders for a module's shared runs and removes them after its last test
unless one of its tests failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# One XLA compilation cache for the session, this process and every subprocess it starts (they inherit
# the variable; so do pytest-xdist's workers, which then share it): many tests train or run the same
# network at the same shapes, and on 2 cores compiling it costs more than running it. Set before the
# first import of JAX, which reads the variable then. A developer's own JAX_COMPILATION_CACHE_DIR is
# kept (and kept on disk); ours goes with the session. A size limit switches on JAX's file lock around
# every read and write (filelock comes with torch): without it a process could read an entry another
# process is still writing (the two-process tests, and the xdist workers).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="keras-glacier-xla-cache-")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

# The suite trains, saves, converts and predicts on the stock Keras ops, the path GPUs and TPUs take:
# on a 2-core CPU the XLA:CPU kernels double what a fresh process spends compiling a tiny training job
# (121 s against 60 s; 33 s against 25 s for a second job in the same process), and the suite is mostly
# such jobs and fresh processes (the notebook's kernel, the two-process jobs, the benchmarks). The kernels
# are tested where they are the subject, under ``xla_cpu.kernels("auto")``: each against its stock op,
# values and gradients (tests/model/test_xla_cpu.py, the harness names both modes), the layer-by-layer
# and end-to-end Keras-PyTorch parity (tests/convert/test_parity.py), and the default training job end to
# end, export included (tests/test_train_cli.py). A developer's own setting of the variable is kept.
os.environ.setdefault("KERAS_GLACIER_KERNELS", "stock")

from keras_glacier.data import compute_stats, discover, make_demo_band_folders, make_demo_dataset  # noqa: E402

DEMO_SCENES = 3
DEMO_TILES_PER_SCENE = 4
DEMO_SIZE = 64
DEMO_TIFF_TILES = 6


def pytest_unconfigure(config):
    # Under pytest-xdist (`-n 2`, the README's test command) the workers inherit the variable from the
    # controller, which made the folder, so _OWN_CACHE is False in them: only the controller removes it,
    # after the last worker has finished.
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_submission_time_budget(monkeypatch):
    """solution.maskgeration's time budget off: on a busy test machine it would drop TTA views and make
    masks depend on the load. Tests of the budget set GLACIER_TIME_BUDGET themselves."""
    monkeypatch.setenv("GLACIER_TIME_BUDGET", "0")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """``tmp_path_factory.mktemp`` for a test module's shared files (a trained run, packed weights), each
    folder removed once the module's last test has run, unless a test failed meanwhile (its logs stay
    to be read). A run here is a ~100 MB model or several, and keeping every module's until the session
    ended filled the CI machine's disk (16 GB per suite run); the function-scoped ``tmp_path`` of a
    passing test goes at its teardown (``tmp_path_retention_policy`` in pyproject.toml)."""
    made = []
    failed_before = request.session.testsfailed

    def mktemp(name):
        path = tmp_path_factory.mktemp(name)
        made.append(path)
        return path

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_npy_root(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo_npy"), scenes=DEMO_SCENES, tiles_per_scene=DEMO_TILES_PER_SCENE, size=DEMO_SIZE
    )


@pytest.fixture(scope="session")
def demo_npy_source(demo_npy_root):
    return discover(demo_npy_root)


@pytest.fixture(scope="session")
def demo_stats(demo_npy_source):
    return compute_stats(demo_npy_source.samples, demo_npy_source.default_bands)


@pytest.fixture(scope="session")
def demo_tiff_root(tmp_path_factory):
    return make_demo_band_folders(tmp_path_factory.mktemp("demo_tiff"), tiles=DEMO_TIFF_TILES, size=DEMO_SIZE)


@pytest.fixture(scope="session")
def demo_tiff_source(demo_tiff_root):
    return discover(demo_tiff_root)
