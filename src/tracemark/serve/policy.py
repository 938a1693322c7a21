"""Output policies: what a client sees of the model's answer (label, top-k, rounded probabilities).

A client record may choose its own policy, but never one more revealing than the package
licence allows: :func:`restrict` caps it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracemark.package.licence import OutputPolicy

_RANK = {"label": 0, "top_k": 1, "probabilities": 2}


def _min_decimals(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def restrict(wanted: OutputPolicy, ceiling: OutputPolicy | None) -> OutputPolicy:
    """``wanted``, made no more revealing than ``ceiling`` (mode, k and decimals each capped)."""
    if ceiling is None:
        return wanted
    if ceiling.mode == "label" or wanted.mode == "label":
        return OutputPolicy("label")
    decimals = _min_decimals(wanted.decimals, ceiling.decimals)
    if ceiling.mode == "top_k":
        k = ceiling.top_k if wanted.mode == "probabilities" else min(wanted.top_k or 1, ceiling.top_k or 1)
        return OutputPolicy("top_k", k, decimals)
    return OutputPolicy(wanted.mode, wanted.top_k, decimals)


def effective_policy(client_policy: OutputPolicy | None, default: OutputPolicy, ceiling: OutputPolicy | None) -> OutputPolicy:
    """The client's own policy if it has one, else ``default``; either capped by ``ceiling``."""
    return restrict(client_policy or default, ceiling)


def _rounded(values: np.ndarray, decimals: int | None) -> list:
    return (np.round(values, decimals) if decimals is not None else values).tolist()


def render(labels: np.ndarray, probabilities: np.ndarray, policy: OutputPolicy) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The response fields for a batch under ``policy``, and each input's answer (for the audit log).

    Always ``labels``; ``top_k`` (per input ``{"labels": [...], "scores": [...]}``) or
    ``probabilities`` when the policy allows them.
    """
    label_list = [int(v) for v in labels]
    if policy.mode == "label":
        return {"labels": label_list}, [{"label": v} for v in label_list]
    if policy.mode == "top_k":
        k = min(int(policy.top_k or 1), probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        scores = _rounded(np.take_along_axis(probabilities, order, axis=1), policy.decimals)
        top = [{"labels": o, "scores": s} for o, s in zip(order.tolist(), scores)]
        return {"labels": label_list, "top_k": top}, [{"label": v, "top_k": t} for v, t in zip(label_list, top)]
    probs = _rounded(probabilities, policy.decimals)
    return {"labels": label_list, "probabilities": probs}, [{"label": v, "probabilities": p} for v, p in zip(label_list, probs)]


__all__ = ["restrict", "effective_policy", "render"]
