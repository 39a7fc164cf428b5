"""The one adapter to ``solution.py``'s framework-free helpers (tile matching, band reading, tiling, TTA).

``solution.py`` is the competition's single file and the one definition of those rules; the package
calls them through here. It is imported on first use, because it imports torch, which users of HKH
``.npy`` slices never need, and its ``InputError`` (it may import nothing from this package) is
re-raised as :class:`keras_glacier.errors.InputError`, so callers handle one type.
"""

from __future__ import annotations

from keras_glacier.errors import InputError


def solution_module():
    """``solution.py`` (repository root), imported when first needed."""
    import solution

    return solution


def shared(function_name: str, *args, **kwargs):
    """Call a ``solution.py`` helper, re-raising its InputError as ours."""
    solution = solution_module()
    try:
        return getattr(solution, function_name)(*args, **kwargs)
    except solution.InputError as exc:
        raise InputError(str(exc)) from exc
