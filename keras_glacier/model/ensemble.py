"""``GlacierEnsemble``: several trained GlacierDeepLab networks as one Keras model.

On few tiles an ensemble of independently trained networks scores better than any of its members
(benchmarks/RESULTS.md, everest-west), so ``train --members N`` keeps one. It is a model like any
other: its output is a logit map, so every tool that loads a ``.keras`` file (predict, evaluate,
the Segmenter, scenes) uses it unchanged, and ``convert`` packs its members into the ensemble
``model.pth`` that solution.py reads.

What is averaged is the members' probabilities (as solution.py averages them), returned as logits
of that average: the binary logit ``log(p / (1 - p))``, the class logits ``log(p_k)`` (a softmax
of them gives back ``p``), so ``sigmoid``/``softmax`` of the output is exactly the averaged
probability, up to clipping at ``EPSILON``.

``get_config`` reports the first member's description (bands, task, classes, statistics) with the
ensemble's own decision threshold, as a GlacierDeepLab's would read, plus the members themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from keras_glacier.model.deeplab import GlacierDeepLab
from keras_glacier.model.layers import PACKAGE

#: Probabilities are clipped to [EPSILON, 1 - EPSILON] before the logit (float32 keeps 1 - 1e-7).
EPSILON = 1e-7
#: Keys on which the members of an ensemble must agree: they average probabilities of the same
#: classes computed from the same bands (here and in ``convert``, which packs runs into one model.pth).
AGREEMENT_KEYS = ("num_bands", "band_names", "task", "class_names", "class_values")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanProbability(layers.Layer):
    """Logits of the members' mean probability: sigmoid for one logit (binary), softmax for several."""

    def call(self, member_logits):
        logits = [ops.cast(x, "float32") for x in member_logits]
        if logits[0].shape[-1] == 1:
            p = ops.mean(ops.stack([ops.sigmoid(x) for x in logits]), axis=0)
            p = ops.clip(p, EPSILON, 1.0 - EPSILON)
            return ops.log(p) - ops.log1p(-p)
        p = ops.mean(ops.stack([ops.softmax(x, axis=-1) for x in logits]), axis=0)
        return ops.log(ops.clip(p, EPSILON, 1.0))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def members_disagreement(names: Sequence[str], configs: Sequence[dict]) -> str | None:
    """Why the networks ``names`` (with these configurations) cannot form one ensemble, or None."""
    for key in AGREEMENT_KEYS:
        values = [config.get(key) for config in configs]
        if key == "band_names" and any(value is None for value in values):
            continue  # an older model names no bands
        if any(value != values[0] for value in values[1:]):
            shown = "; ".join(f"{name}: {value}" for name, value in zip(names, values))
            return f"the runs disagree on {key} and cannot form one ensemble ({shown})"
    return None


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlacierEnsemble(keras.Model):
    """Raw (B, H, W, bands) -> float32 logits of the members' mean probability, (B, H, W, 1) or (B, H, W, K).

    ``members``: GlacierDeepLab models that agree on bands and classes (a ValueError says which
    differ). They are renamed ``member_1`` .. ``member_N`` inside the ensemble (a Keras model's
    layer names are unique). ``threshold`` (binary): the decision threshold of the averaged
    probability, chosen for the ensemble; None takes the members' mean.
    """

    def __init__(self, members: Sequence[GlacierDeepLab], threshold: float | None = None,
                 name: str = "glacier_ensemble", **kwargs):
        members = [_as_member(m) for m in members]
        if not members:
            raise ValueError("an ensemble needs at least one member")
        configs = [m.get_config() for m in members]
        problem = members_disagreement([f"member {i + 1}" for i in range(len(configs))], configs)
        if problem:
            raise ValueError(problem)
        if threshold is None:
            threshold = sum(float(c["threshold"]) for c in configs) / len(configs)
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a probability strictly between 0 and 1 (got {threshold})")
        renamed = [_renamed(member, f"member_{i + 1}") for i, member in enumerate(members)]
        inputs = keras.Input((None, None, configs[0]["num_bands"]), name="bands", dtype="float32")
        outputs = MeanProbability(dtype="float32", name="mean_probability")([m(inputs) for m in renamed])
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.members = renamed
        self.threshold = float(threshold)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def get_config(self) -> dict:
        config = dict(self.members[0].get_config())
        config["threshold"] = float(self.threshold)
        config["members"] = [keras.saving.serialize_keras_object(m) for m in self.members]
        return config

    @classmethod
    def from_config(cls, config: dict) -> GlacierEnsemble:
        # Each member is rebuilt under its name in the ensemble, so no renamed copy is made.
        members = [keras.saving.deserialize_keras_object({**m, "config": {**m["config"], "name": f"member_{i + 1}"}})
                   for i, m in enumerate(config["members"])]
        return cls(members, threshold=config.get("threshold"))


def _as_member(model) -> GlacierDeepLab:
    if not isinstance(model, GlacierDeepLab):
        raise ValueError(f"ensemble members are GlacierDeepLab models, got {type(model).__name__}")
    return model


def _renamed(member: GlacierDeepLab, name: str) -> GlacierDeepLab:
    """``member`` under ``name``: the same network and weights (a copy only when the name differs)."""
    if member.name == name:
        return member
    copy = GlacierDeepLab.from_config({**member.get_config(), "name": name})
    copy.set_weights(member.get_weights())
    return copy


__all__ = ["AGREEMENT_KEYS", "EPSILON", "GlacierEnsemble", "MeanProbability", "members_disagreement"]
