"""Removal attacks a model thief would use, each with declared parameters.

Weight-access attacks take a torch module; API attacks (extraction, distillation, input
transformations) take any :class:`~tracemark.targets.Target`, so they run over HTTP too.
"""

from tracemark.attacks.art import ArtExtract
from tracemark.attacks.base import KINDS, Attack, AttackError, Stolen, ThiefData, prunable_weights
from tracemark.attacks.distill import Distill
from tracemark.attacks.extract import Extract
from tracemark.attacks.finetune import MODES, FineTune, last_linear
from tracemark.attacks.noise import WeightNoise
from tracemark.attacks.prune import Prune, prune_weights
from tracemark.attacks.quantize import Quantize, int8_layers, quantize_int8
from tracemark.attacks.transform import TRANSFORMS, InputTransform, TransformedTarget

__all__ = [
    "KINDS",
    "MODES",
    "TRANSFORMS",
    "ArtExtract",
    "Attack",
    "AttackError",
    "Distill",
    "Extract",
    "FineTune",
    "InputTransform",
    "Prune",
    "Quantize",
    "Stolen",
    "ThiefData",
    "TransformedTarget",
    "WeightNoise",
    "int8_layers",
    "last_linear",
    "prunable_weights",
    "prune_weights",
    "quantize_int8",
]
