"""Atomic file writes: a crash or a full disk never leaves a half-written file under the final name.

The one helper of the package for writing files a user keeps (JSON reports, splits, statistics,
models, figures, masks, the cache's metadata): every writer goes through ``atomic_write``, so an
interrupted run leaves the previous file or none, never half of one. ``keras_glacier.data.fileio``
re-exports it for the data layer's older imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file over ``path``.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic), is
    hidden (leading dot) and keeps the suffix, so writers that add an extension (``np.save``) or
    pick a format from it (``tifffile``) behave as for the final name. Its name is fresh rather
    than made by ``mkstemp``, whose 0600 mode would carry over to the published file; ``write``
    creates it with the process's usual permissions. ``write`` may also check what it wrote and
    raise: nothing is then published.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}{path.suffix}"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def committed_together() -> Iterator[list]:
    """Streamed outputs (a scene's rasters, its outlines) that land together or not at all.

    Each writer writes to a temporary file and has ``commit()`` (rename it over the final name) and
    ``abort()`` (remove it). The block gets the list and may append writers as it opens them; when it
    ends normally every writer is committed, and when it (or a commit, or opening a later writer)
    fails, every writer is aborted and the error goes on: no half-written file under a final name.
    """
    writers = []
    try:
        yield writers
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text (reports, CSV tables), written atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Indented JSON, written atomically (stats, splits and cache metadata are read by people too)."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_keras_model(model, path: str | os.PathLike) -> Path:
    """``model.save`` atomically (the temporary name keeps the ``.keras`` suffix that Keras requires)."""
    return atomic_write(path, model.save)


#: The weights member of a ``.keras`` archive (Keras's own name for it).
KERAS_WEIGHTS_MEMBER = "model.weights.h5"


def load_keras_weights(model, path: str | os.PathLike) -> None:
    """``model.load_weights(path)``, reading a ``.keras`` archive's weights from an extracted copy.

    Why: Keras reads ``load_weights("x.keras")`` through the zip archive itself, and h5py's many seeks
    make the zip stream re-read and re-check (CRC) the compressed member from its start each time
    backwards; Keras's own ``load_model`` avoids it by reading the member whole first, ``load_weights``
    does not. Extracting it once is one sequential read (benchmarks/PERFORMANCE.md has the times).
    """
    path = Path(path)
    if path.suffix != ".keras":
        model.load_weights(path)
        return
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="keras-glacier-weights-") as tmp:
        if KERAS_WEIGHTS_MEMBER not in archive.namelist():  # another layout: Keras's own reader and errors
            model.load_weights(path)
            return
        model.load_weights(archive.extract(KERAS_WEIGHTS_MEMBER, tmp))
