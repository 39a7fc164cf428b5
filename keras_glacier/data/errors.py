"""The data layer's error type: ``keras_glacier.errors.InputError``, re-exported here.

User mistakes in the data (a missing folder, a tile without its mask, a corrupt file) raise
``InputError`` so that CLIs can print a one-line ``error: ...`` instead of a traceback. It is a
``ValueError`` subclass, so callers that already catch ``ValueError`` keep working. The class is
defined once, in ``keras_glacier/errors.py`` (the hierarchy of every user error); this module
keeps the import path the data layer has always used.

It is not ``solution.InputError``: ``solution`` imports torch at module level and the data layer
must stay importable without torch. Where the data layer calls the band-folder helpers of
``solution``, their ``solution.InputError`` is re-raised as this class (see ``sources.py``), so
callers of ``keras_glacier.data`` catch exactly one type.
"""

from keras_glacier.errors import InputError

__all__ = ["InputError"]
