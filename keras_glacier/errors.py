"""The one error hierarchy: every mistake a user can make ends as a ``GlacierError``.

Command-line tools print a ``GlacierError`` as one ``error: ...`` line and exit with status 2
(``keras_glacier.cli.run``); anything else is a bug and keeps its traceback. The classes subclass
``ValueError`` as well, so code that already caught ``ValueError`` keeps working.

- ``InputError``: a user's file or folder is wrong; the message names it and says what is wrong.
- ``UsageError``: the flags or the configuration are wrong (a value out of range, a missing
  ``--out`` for ``--resume``); the message names the flag.

Two user-error types live outside this package and are mapped by the runner rather than
subclassed: ``solution.InputError`` (``solution.py`` must import nothing from here) and convert's
``ConversionInputError`` (see ``keras_glacier.cli.user_error_types``).
"""

from __future__ import annotations


class GlacierError(ValueError):
    """Base of every user-facing error of keras-glacier: reported in one line, without a traceback."""


class InputError(GlacierError):
    """A problem with the user's files: the message names the file and what is wrong."""


class UsageError(GlacierError):
    """A mistake in the command line or the configuration (``TrainConfig``): the message names the flag."""


__all__ = ["GlacierError", "InputError", "UsageError"]
