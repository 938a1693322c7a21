"""``verify``: ask a target the key's triggers and decide, with a stated error rate."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from tracemark.errors import QueryBudgetExceededError, TargetError
from tracemark.keys.key import WatermarkKey
from tracemark.targets.base import Target
from tracemark.verification.null import NullModel, choose_null, empirical_null
from tracemark.verification.stats import binomial_pvalue, min_matches_for
from tracemark.verification.verdict import Verdict

DEFAULT_ALPHA = 1e-9


def verify(
    key: WatermarkKey,
    target: Target,
    *,
    alpha: float = DEFAULT_ALPHA,
    max_queries: int | None = None,
    references: Sequence[Target] | None = None,
    null: NullModel | None = None,
    assumed_null_rate: float | None = None,
    batch_size: int = 100,
) -> Verdict:
    """Check ``target`` for the watermark of ``key``.

    Queries up to ``max_queries`` triggers (all by default) in batches. A batch the target
    fails to answer is recorded as unanswered, not as a mismatch; if no batch is answered
    the target's error is raised. The null is the most cautious of the key's exact rate,
    an empirical one from ``references`` (or a precomputed ``null``), and
    ``assumed_null_rate``. The verdict is ``copy`` when the binomial p-value is at most
    ``alpha`` (default 1e-9), ``inconclusive`` when the unanswered queries could have
    changed that, else ``no-evidence``.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    key.check_compatible(target.input_shape, target.num_classes)
    start = time.perf_counter()
    triggers = key.triggers()
    n = len(triggers) if max_queries is None else min(int(max_queries), len(triggers))
    if n < 1:
        raise ValueError("max_queries must be at least 1")
    if null is None and references:
        null = empirical_null(key, references)
    chosen = choose_null(key, null, assumed_null_rate)

    answers = np.full(n, -1, dtype=np.int64)
    errors: list[str] = []
    last_error: TargetError | None = None
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        try:
            answers[lo:hi] = target.predict_labels(triggers.inputs[lo:hi])
        except TargetError as exc:
            last_error = exc
            errors.append(f"queries {lo}-{hi - 1}: {type(exc).__name__}: {exc}")
            if isinstance(exc, QueryBudgetExceededError):
                break
    answered_mask = answers >= 0
    answered = int(answered_mask.sum())
    if answered == 0 and last_error is not None:
        raise last_error
    # compatibility of the answers themselves (a remote API cannot be asked its class count)
    key.check_compatible(None, target.num_classes)

    matches = int(np.sum(answers[answered_mask] == triggers.labels[:n][answered_mask]))
    p_value = binomial_pvalue(matches, answered, chosen.rate)
    threshold = min_matches_for(alpha, answered, chosen.rate)
    unanswered = n - answered
    note = ""
    if p_value <= alpha:
        label = "copy"
    else:
        best_case = binomial_pvalue(matches + unanswered, n, chosen.rate)
        if unanswered and best_case <= alpha:
            label = "inconclusive"
            note = f"{unanswered} queries went unanswered; had they matched, the verdict would be copy"
        elif threshold is None:
            label = "inconclusive"
            note = f"{answered} answers cannot reach alpha {alpha:.0e} even if all match; use more triggers"
        else:
            label = "no-evidence"
    return Verdict(
        verdict=label,  # type: ignore[arg-type]
        p_value=p_value,
        matches=matches,
        answered=answered,
        queries=n,
        alpha=alpha,
        null=chosen.to_dict(),
        threshold=threshold,
        key_commitment=key.commitment(),
        target=str(target),
        answers=answers.tolist(),
        errors=errors,
        seconds=time.perf_counter() - start,
        note=note,
    )
