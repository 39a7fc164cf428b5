"""keras_glacier.fileio: the one atomic writer (every JSON, model, figure and export goes through it)."""

from __future__ import annotations

import json

import pytest

from keras_glacier.fileio import atomic_write, write_json


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
