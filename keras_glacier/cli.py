"""The one command-line runner: user mistakes end in one ``error: ...`` line and exit status 2.

Every entry point (``train``, ``predict``, ``evaluate``, ``convert``) wraps its job in :func:`run`.
What counts as the user's fault is decided here, once: :class:`keras_glacier.errors.GlacierError`
and its subclasses (convert's ``ConversionInputError`` among them), plus the one type that lives where
this package cannot reach into its class tree: ``solution.InputError`` (``solution.py`` imports nothing
from this package). A ``convert.ConversionError`` (the weights did not map or the exported
file did not reproduce the Keras logits) is not the user's input but not a crash either: one
line, exit status 1, as ``python -m convert`` has always answered. Everything else propagates
with its traceback, because it is a bug.

The runner also chooses matplotlib's non-interactive ``Agg`` backend: figures are written to files
by the command-line tools (often on machines without a display), and choosing a backend is a
process-wide side effect that only an entry point may make (importing ``keras_glacier.plots`` in a
notebook must not switch the notebook's backend).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from keras_glacier.errors import GlacierError

#: Exit status of a user mistake (as argparse uses for a bad flag).
USAGE_STATUS = 2
#: Exit status of a conversion that was refused after checking (``convert.ConversionError``).
CONVERSION_STATUS = 1


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the user's input is wrong" (exit 2).

    ``solution`` is looked up only if already imported: an exception of its type cannot exist
    otherwise, and importing it here would pull torch into every command.
    """
    types: list[type[BaseException]] = [GlacierError]
    solution = sys.modules.get("solution")
    if solution is not None and hasattr(solution, "InputError"):
        types.append(solution.InputError)
    return tuple(types)


def status_of(exc: BaseException) -> int | None:
    """The exit status for ``exc`` if it is a reported (non-bug) error, else None."""
    if isinstance(exc, user_error_types()):
        return USAGE_STATUS
    name_map = sys.modules.get("convert.name_map")
    if name_map is not None and isinstance(exc, getattr(name_map, "ConversionError", ())):
        return CONVERSION_STATUS
    return None


def one_line(exc: BaseException) -> str:
    """The message on one line (messages that quote file contents or wrap are flattened)."""
    return " ".join(str(exc).split())


def use_file_backend() -> None:
    """matplotlib's ``Agg`` backend (files only), chosen by command-line entry points only."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return
    matplotlib.use("Agg")


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a user error prints ``error: <one line>`` to stderr and returns 2.

    ``main`` parses ``argv`` itself (argparse's own errors exit 2 as usual) and returns an exit
    status (None means 0). Exceptions that are not user errors propagate unchanged.
    """
    use_file_backend()
    try:
        status = main(argv)
    except Exception as exc:
        code = status_of(exc)
        if code is None:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return code
    return 0 if status is None else int(status)


__all__ = ["CONVERSION_STATUS", "USAGE_STATUS", "one_line", "run", "status_of", "use_file_backend", "user_error_types"]
