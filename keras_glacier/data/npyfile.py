"""Read .npy files as read-only memory maps, safely from several threads.

numpy parses a .npy header (a dict literal) with ``ast.literal_eval``, and CPython before 3.11.8 /
3.12.1 (gh-106905) can then fail with "SystemError: AST constructor recursion depth mismatch"
when another thread compiles code at the same moment (an import, a dataclass), which the
loader's worker threads and the training thread do. Plain headers are therefore read here
without ``ast``; anything unusual falls back to ``np.load`` under a lock.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from keras_glacier.data.errors import InputError

#: Serialises the fallback path of ``_load_npy`` (np.load parses headers with ``ast``; see below).
_NPY_OPEN_LOCK = threading.Lock()
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_FIELDS = re.compile(
    r"""^\{\s*'descr':\s*'(?P<descr>[^']+)',\s*'fortran_order':\s*(?P<fortran>True|False),"""
    r"""\s*'shape':\s*\((?P<shape>[\d,\s]*)\),?\s*\}\s*$"""
)


def npy_layout(path: str):
    """(dtype, shape, Fortran order, data offset) of a plain .npy file, or None for anything unusual.

    Read without ``ast`` (see the module docstring).
    """
    with open(path, "rb") as handle:
        start = handle.read(10)
        if len(start) < 10 or start[:6] != _NPY_MAGIC:
            return None
        major = start[6]
        if major == 1:
            length, offset = int.from_bytes(start[8:10], "little"), 10
        elif major in (2, 3):
            start += handle.read(2)
            length, offset = int.from_bytes(start[8:12], "little"), 12
        else:
            return None
        header = handle.read(length).decode("utf-8" if major == 3 else "latin1", errors="replace")
    match = _HEADER_FIELDS.match(header.strip())
    if match is None:
        return None
    try:
        dtype = np.dtype(match["descr"])
        shape = tuple(int(part) for part in match["shape"].split(",") if part.strip())
    except (TypeError, ValueError):
        return None
    if dtype.hasobject or not shape:
        return None
    return dtype, shape, match["fortran"] == "True", offset + length


def load_npy(path: str) -> np.ndarray:
    """The array of a .npy file, memory-mapped read-only, safe to call from several threads."""
    try:
        layout = npy_layout(path)
        if layout is not None:
            dtype, shape, fortran, offset = layout
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        with _NPY_OPEN_LOCK:
            return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        if not _has_npy_magic(path):  # numpy's own message would blame pickled data
            raise InputError(f"{path}: not a .npy file (no NumPy header; truncated, or another format?)") from exc
        raise InputError(f"{path}: cannot read .npy file ({type(exc).__name__}: {exc})") from exc


def _has_npy_magic(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(6) == b"\x93NUMPY"
    except OSError:
        return False
