"""tracemark: mark, ship, serve, trace and prove ownership of trained ML models.

The public API, in the order a user meets it::

    import tracemark as tm
    data = tm.load_dataset("digits")
    key = tm.WatermarkKey.generate("content", images=data.x_train, labels=data.y_train)
    report = tm.embed(model, key, data)            # or tm.TriggerMixDataset in your own loop
    verdict = tm.verify(key, tm.TorchTarget(model))  # or tm.load_target(path), tm.HttpTarget(url)
"""

from tracemark import errors
from tracemark.data import ImageData, ModelSpec, build_model, load_dataset, load_model, save_model
from tracemark.data.export import save_exported, save_onnx
from tracemark.embed import EmbedReport, TriggerMixDataset, assess, embed
from tracemark.keys import KINDS, TriggerSet, WatermarkKey
from tracemark.targets import Answers, CallableTarget, OnnxTarget, Target, TorchTarget, exported_target, load_target
from tracemark.training import accuracy, fit, predict_labels, to_tensor_dataset
from tracemark.verify import DEFAULT_ALPHA, NullModel, Verdict, empirical_null, verify

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ALPHA",
    "KINDS",
    "Answers",
    "CallableTarget",
    "EmbedReport",
    "HttpTarget",
    "ImageData",
    "ModelSpec",
    "NullModel",
    "OnnxTarget",
    "Target",
    "TorchTarget",
    "TriggerMixDataset",
    "TriggerSet",
    "Verdict",
    "WatermarkKey",
    "accuracy",
    "assess",
    "build_model",
    "embed",
    "empirical_null",
    "errors",
    "exported_target",
    "fit",
    "load_dataset",
    "load_model",
    "load_target",
    "predict_labels",
    "save_exported",
    "save_model",
    "save_onnx",
    "to_tensor_dataset",
    "verify",
]


def __getattr__(name: str):  # HttpTarget pulls in httpx only when used
    if name == "HttpTarget":
        from tracemark.targets.http import HttpTarget

        return HttpTarget
    raise AttributeError(f"module 'tracemark' has no attribute {name!r}")
