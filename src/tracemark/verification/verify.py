"""``verify``: ask a target the key's triggers and decide, with a stated error rate."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from tracemark.keys.key import WatermarkKey
from tracemark.targets.base import Target, ask_labels
from tracemark.verification.null import NullModel, choose_null, control_null, empirical_null
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

    Queries up to ``max_queries`` triggers (all by default) in batches; the verdict's
    ``inputs_sent`` counts every input the target was given (controls and, for a target that
    counts them in ``queries_used``, retries included). A batch the target
    fails to answer is recorded as unanswered, not as a mismatch; if no batch is answered
    the target's error is raised. The null is the most cautious of the key's exact rate,
    an empirical one from ``references`` (or a precomputed ``null``), and
    ``assumed_null_rate``; for single-target keys built on real images it also asks the
    unstamped source images and bounds how often the suspect gives them the watermark class
    (so a model answering that class to everything is not called a copy). The verdict is
    ``copy`` when the binomial p-value is at most ``alpha`` (default 1e-9), ``inconclusive``
    when the unanswered queries could have changed that, else ``no-evidence``.
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

    used_before = getattr(target, "queries_used", None)
    answers, errors, last_error = ask_labels(target, triggers.inputs[:n], batch_size)
    inputs_sent = n
    control = None
    if key.label_mode == "single" and key.base_images is not None and last_error is None:
        # the same images without the mark: a suspect that gives the watermark class to
        # everything must not look like a copy
        control_answers, _, _ = ask_labels(target, key.base_images[:n].astype(np.float32) / np.float32(255), batch_size)
        inputs_sent += n
        if np.any(control_answers >= 0):
            control = control_null(key, control_answers)
    if used_before is not None:  # a metered target counts what it really sent, retries included
        inputs_sent = int(target.queries_used) - int(used_before)  # type: ignore[attr-defined]
    chosen = choose_null(key, null, assumed_null_rate, control)
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
        elif chosen.source == "control":
            label = "no-evidence"
            note = (f"the suspect gives the watermark class to {chosen.details['control_matches']} of "
                    f"{chosen.details['control_queries']} unstamped source images too")
        elif threshold is None:
            label = "inconclusive"
            more = (f"raise max_queries (--max-queries; the key has {len(triggers)} triggers)" if n < len(triggers)
                    else "use a key with more triggers")
            note = f"{answered} answers cannot reach alpha {alpha:.0e} even if all match; {more}"
        else:
            label = "no-evidence"
    return Verdict(
        verdict=label,  # type: ignore[arg-type]
        p_value=p_value,
        matches=matches,
        answered=answered,
        queries=n,
        inputs_sent=inputs_sent,
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
