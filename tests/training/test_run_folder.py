"""Choosing the run folder: a finished run is refused without --overwrite, and --overwrite clears exactly
the run's own files and part folders (folds, members, a refit's validated run)."""

from __future__ import annotations

import pytest

from keras_glacier.errors import UsageError
from keras_glacier.training.config import TrainConfig
from keras_glacier.training.run_folder import choose_run_dir


def test_overwrite_clears_the_run_and_its_parts_but_nothing_else(tmp_path):
    out = tmp_path / "run"
    for part in ("validation-run", "member-1", "fold-2"):
        (out / part).mkdir(parents=True)
        (out / part / "model.keras").write_text("old")
    (out / "model.keras").write_text("old")
    (out / "notes.txt").write_text("the user's own")
    config = TrainConfig(out=str(out))
    with pytest.raises(UsageError, match=r"already holds a run \(model\.keras, fold-2/, member-1/\); use --resume"):
        choose_run_dir(config, resume=False, overwrite=False)
    assert (out / "validation-run" / "model.keras").is_file()
    assert choose_run_dir(config, resume=False, overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
