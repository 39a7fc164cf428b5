"""``python -m keras_glacier.train``: train the glacier network and export it for the competition.

With no ``--data`` the job generates the deterministic demo scenes and trains on them, so the very
first command a newcomer runs ends with a real ``model.keras`` and ``model.pth``.

The job lives in ``keras_glacier/training/`` (``TrainConfig``, the fit loop, the run folder, the
command line); this module is the command-line entry and keeps the names callers used. It is also
*callable*: ``keras_glacier.train`` is both this module (``python -m keras_glacier.train``,
``from keras_glacier import train``) and the Python API ``keras_glacier.train(config)``. Python sets
a package's attribute to its submodule whenever the submodule is imported, so a separate function
of that name would be replaced by the module at the first ``-m`` or ``from ... import``; a module
whose class has ``__call__`` is the one object that can be both.
"""

from __future__ import annotations

import sys
import types

from keras_glacier.training.cli import build_parser, config_from_args, main
from keras_glacier.training.config import PRECISIONS, TrainConfig
from keras_glacier.training.fit import build_model, effective_crop, make_callbacks, train
from keras_glacier.training.run_folder import RUN_FILES, RunResult

__all__ = ["PRECISIONS", "RUN_FILES", "RunResult", "TrainConfig", "build_model", "build_parser",
           "config_from_args", "effective_crop", "main", "make_callbacks", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, config: TrainConfig | None = None, **kwargs) -> RunResult:
        """``keras_glacier.train(config, resume=False, overwrite=False, callbacks=(), **settings)``."""
        return train(config, **kwargs)


if __name__ == "__main__":
    sys.exit(main(restart=True))
else:
    sys.modules[__name__].__class__ = _CallableModule
