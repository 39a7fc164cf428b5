"""Training: ``TrainConfig`` (the settings), ``train`` (the job), the run folder, the command line.

Modules: ``config`` (TrainConfig: defaults, checks, JSON round trip; no keras), ``fit`` (data,
model, fit loop, threshold, export), ``run_folder`` (choosing the folder, RunResult), ``cli``
(``python -m keras_glacier.train``, derived from TrainConfig). ``train`` and ``RunResult`` load
keras on first access; ``TrainConfig`` does not.
"""

from keras_glacier.training.config import TrainConfig

__all__ = ["RunResult", "TrainConfig", "train"]


def __getattr__(name: str):
    if name == "train":
        from keras_glacier.training.fit import train

        return train
    if name == "RunResult":
        from keras_glacier.training.run_folder import RunResult

        return RunResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
