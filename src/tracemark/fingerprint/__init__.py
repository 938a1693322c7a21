"""Per-customer marks and leak tracing: a different code in every customer's copy, and which customer leaked.

See docs/guide/tracing.md. In short::

    scheme = FingerprintScheme.from_key(key)               # key: a content WatermarkKey (the only secret)
    fanout(base, scheme, ["acme", "globex"], data, "copies/", workers=2)
    result = trace(scheme, ["acme", "globex"], tm.load_target("leaked.onnx"))
    result = trace(scheme, ["acme", "globex"], tm.load_target("leaked.safetensors"), base=base)  # + weight test
"""

from tracemark.fingerprint.codes import FingerprintScheme, QuerySet
from tracemark.fingerprint.errors import (
    CodeGoalWarning,
    CustomersFileError,
    DuplicateCustomerError,
    FingerprintError,
    RegistryError,
    RegistryKeyMismatchError,
)
from tracemark.fingerprint.fanout import (
    CopyReport,
    FanoutReport,
    FeatureCache,
    TrainSettings,
    code_accuracy,
    fanout,
    feature_cache,
    mark_customer,
)
from tracemark.fingerprint.registry import CustomerRecord, Registry, read_customers_file, record_customer_code
from tracemark.fingerprint.trace import CustomerScore, TraceResult, score_answers, trace
from tracemark.fingerprint.weights import WeightScore, WeightTrace, add_weight_code, weight_trace

__all__ = [
    "CodeGoalWarning",
    "CopyReport",
    "CustomerRecord",
    "CustomerScore",
    "CustomersFileError",
    "DuplicateCustomerError",
    "FanoutReport",
    "FeatureCache",
    "FingerprintError",
    "FingerprintScheme",
    "QuerySet",
    "Registry",
    "RegistryError",
    "RegistryKeyMismatchError",
    "TraceResult",
    "TrainSettings",
    "WeightScore",
    "WeightTrace",
    "add_weight_code",
    "code_accuracy",
    "fanout",
    "feature_cache",
    "mark_customer",
    "read_customers_file",
    "record_customer_code",
    "score_answers",
    "trace",
    "weight_trace",
]
