"""The one exception type of the data layer.

User mistakes in the data (a missing folder, a tile without its mask, a corrupt file) raise
``InputError`` so that CLIs can print a one-line ``error: ...`` instead of a traceback. It is a
``ValueError`` subclass, so callers that already catch ``ValueError`` keep working.

It is our own class rather than a re-export of ``solution.InputError``: ``solution`` imports torch
at module level and the data layer must stay importable without torch. Where the data layer calls
the band-folder helpers of ``solution``, their ``solution.InputError`` is re-raised as this class
(see ``sources.py``), so callers of ``keras_glacier.data`` catch exactly one type.
"""


class InputError(ValueError):
    """A problem with the user's files: the message names the file and what is wrong."""
