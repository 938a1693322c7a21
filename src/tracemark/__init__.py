"""tracemark: mark, ship, serve, trace and prove ownership of trained ML models.

The public API, in the order a user meets it::

    import tracemark as tm
    data = tm.load_dataset("digits")
    key = tm.WatermarkKey.generate("content", images=data.x_train, labels=data.y_train)
    report = tm.embed(model, key, data)            # or tm.TriggerMixDataset in your own loop
    verdict = tm.verify(key, tm.TorchTarget(model))  # or tm.load_target(path), tm.HttpTarget(url)

Names are imported on first use, so ``import tracemark`` (and the CLI, and parts such as the
ledger that need no model code) start without loading torch.
"""

from __future__ import annotations

from tracemark import errors
from tracemark._util.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # keys
    "KINDS": "tracemark.keys",
    "TriggerSet": "tracemark.keys",
    "WatermarkKey": "tracemark.keys",
    # data, models, training
    "ImageData": "tracemark.data",
    "ImageFolder": "tracemark.data.ondisk",
    "MemmapImages": "tracemark.data.ondisk",
    "write_memmap": "tracemark.data.ondisk",
    "ModelSpec": "tracemark.data",
    "build_model": "tracemark.data",
    "load_dataset": "tracemark.data",
    "load_model": "tracemark.data",
    "save_model": "tracemark.data",
    "save_exported": "tracemark.data.export",
    "save_onnx": "tracemark.data.export",
    "accuracy": "tracemark.training",
    "fit": "tracemark.training",
    "predict_labels": "tracemark.training",
    "resolve_device": "tracemark.data.devices",
    "to_tensor_dataset": "tracemark.training",
    # embedding
    "EmbedReport": "tracemark.embedding",
    "TriggerMixDataset": "tracemark.embedding",
    "assess": "tracemark.embedding",
    "embed": "tracemark.embedding",
    # targets
    "Answers": "tracemark.targets",
    "CallableTarget": "tracemark.targets",
    "HttpTarget": "tracemark.targets.http",
    "OnnxTarget": "tracemark.targets",
    "Target": "tracemark.targets",
    "TorchTarget": "tracemark.targets",
    "exported_target": "tracemark.targets",
    "load_target": "tracemark.targets",
    # per-customer marks and tracing
    "FingerprintScheme": "tracemark.fingerprint",
    "TraceResult": "tracemark.fingerprint",
    "fanout": "tracemark.fingerprint",
    "executor_from": "tracemark.executor",
    "trace": "tracemark.fingerprint",
    # ownership evidence, combined
    "CombinedVerdict": "tracemark.evidence",
    "Commitment": "tracemark.evidence",
    "Evidence": "tracemark.evidence",
    "EvidenceResult": "tracemark.evidence",
    "ResponseEvidence": "tracemark.evidence",
    "TraceEvidence": "tracemark.evidence",
    "TriggerEvidence": "tracemark.evidence",
    "WeightEvidence": "tracemark.evidence",
    "combine": "tracemark.evidence",
    "verify_all": "tracemark.evidence",
    # verification
    "DEFAULT_ALPHA": "tracemark.verification",
    "NullModel": "tracemark.verification",
    "Verdict": "tracemark.verification",
    "empirical_null": "tracemark.verification",
    "verify": "tracemark.verification",
}

__all__ = sorted([*_EXPORTS, "errors"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
