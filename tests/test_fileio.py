"""keras_glacier.fileio: the one atomic writer (every JSON, model, figure and export goes through it)."""

from __future__ import annotations

import json

import pytest

from keras_glacier.fileio import atomic_write, committed_together, write_json


def write_x(tmp) -> None:
    with open(tmp, "w") as handle:
        handle.write("x")


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"mcc": 0.5})

    def half_then_crash(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"mcc": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"mcc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_written_file_has_the_permissions_of_an_ordinary_file(tmp_path):
    """Not mkstemp's 0600: a run folder shared with colleagues stays readable to them."""
    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("x")
    written = atomic_write(tmp_path / "model.pth", write_x)
    assert written.stat().st_mode == ordinary.stat().st_mode


def test_the_temporary_name_keeps_the_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "model.keras", lambda tmp: (seen.append(tmp), write_x(tmp)))
    assert seen[0].endswith(".keras") and "/." in seen[0]


class TempFileWriter:
    """A streamed output like the scene writers: a hidden temporary file renamed on commit."""

    def __init__(self, path, fail_on_open=False):
        if fail_on_open:
            raise OSError(f"{path}: cannot open")
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.tmp.write_text("partial")

    def commit(self):
        self.tmp.replace(self.path)

    def abort(self):
        self.tmp.unlink(missing_ok=True)


def test_writers_committed_together_land_together_or_not_at_all(tmp_path):
    with committed_together() as writers:
        writers.append(TempFileWriter(tmp_path / "mask.tif"))
        writers.append(TempFileWriter(tmp_path / "foreground.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreground.tif", "mask.tif"]

    failed = tmp_path / "failed"
    failed.mkdir()
    with pytest.raises(RuntimeError, match="prediction failed"), committed_together() as writers:
        writers.append(TempFileWriter(failed / "mask.tif"))
        raise RuntimeError("prediction failed")
    with pytest.raises(OSError, match="cannot open"), committed_together() as writers:
        writers.append(TempFileWriter(failed / "mask.tif"))
        writers.append(TempFileWriter(failed / "probabilities.tif", fail_on_open=True))
    assert list(failed.iterdir()) == []


def small_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization()(x))


@pytest.mark.parametrize("name", ["best.keras", "latest.weights.h5"])
def test_load_keras_weights_reads_archives_and_weight_files_and_leaves_no_extracted_copy(tmp_path, name,
                                                                                            monkeypatch):
    import tempfile

    import numpy as np

    from keras_glacier.fileio import load_keras_weights, save_keras_model

    saved, other = small_model(0), small_model(1)
    path = tmp_path / name
    save_keras_model(saved, path) if name.endswith(".keras") else saved.save_weights(path)
    assert not all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), other.get_weights()))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    load_keras_weights(other, path)
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), other.get_weights()))
    assert list(scratch.iterdir()) == []
