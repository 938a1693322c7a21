"""Every kind of ownership evidence passes the one conformance check (tests/evidence/conformance.py).

A new kind is one more case builder in ``CASES``: a function of the pytest ``request`` returning a
:class:`~tests.evidence.conformance.Case`.
"""

from __future__ import annotations

import pytest

from tests.evidence.conformance import Case, check_evidence
from tests.evidence.conftest import CUSTOMERS, N_RANDOM, perturbed, random_labels, random_scores
from tracemark.evidence import ResponseEvidence, TraceEvidence, TriggerEvidence, WeightEvidence
from tracemark.targets import TorchTarget


def trigger_case(request: pytest.FixtureRequest) -> Case:
    owned, independents = request.getfixturevalue("owned"), request.getfixturevalue("independents")
    return Case(lambda seed: TriggerEvidence(owned.key), TorchTarget(owned.base), TorchTarget(independents[0]),
                [TorchTarget(m) for m in independents[1:]] + [random_labels(s) for s in range(N_RANDOM)])


def trace_case(request: pytest.FixtureRequest) -> Case:
    owned, independents = request.getfixturevalue("owned"), request.getfixturevalue("independents")
    return Case(lambda seed: TraceEvidence(owned.scheme, CUSTOMERS), TorchTarget(owned.customer_copy),
                TorchTarget(independents[0]),
                [TorchTarget(owned.base)] + [TorchTarget(m) for m in independents[1:]]
                + [random_labels(100 + s) for s in range(N_RANDOM)])


def weight_case(request: pytest.FixtureRequest) -> Case:
    owned, independents = request.getfixturevalue("owned"), request.getfixturevalue("independents")
    # the independent small CNN has the base's architecture, so the weight test applies to it
    return Case(lambda seed: WeightEvidence(owned.scheme, CUSTOMERS, owned.base), TorchTarget(owned.customer_copy),
                TorchTarget(independents[1]), [perturbed(owned.base, s) for s in range(N_RANDOM)])


def response_case(request: pytest.FixtureRequest) -> Case:
    owned, independents = request.getfixturevalue("owned"), request.getfixturevalue("independents")
    return Case(lambda seed: ResponseEvidence(owned.store), TorchTarget(owned.clone), TorchTarget(independents[0]),
                [TorchTarget(owned.base), TorchTarget(owned.customer_copy)] + [TorchTarget(m) for m in independents[1:]]
                + [random_scores(s) for s in range(N_RANDOM)])


CASES = [trigger_case, trace_case, weight_case, response_case]


@pytest.mark.parametrize("build", CASES, ids=lambda build: build.__name__.removesuffix("_case"))
def test_kind_conforms(build, request: pytest.FixtureRequest) -> None:
    case = build(request)
    report = check_evidence(case.evidence_factory, case.copy_target, case.independent_target,
                            null_targets=case.null_targets, alpha=case.alpha, level=case.level)
    assert len(report.null_p) == len(case.null_targets) >= N_RANDOM
    assert report.copy_p <= case.alpha < report.independent_p


def test_weights_of_a_remote_suspect_are_inconclusive_with_the_reason(owned) -> None:
    from tracemark.targets import CallableTarget

    remote = CallableTarget(lambda x: owned.customer_copy(__import__("torch").from_numpy(x)).detach().numpy(), "an API")
    result = WeightEvidence(owned.scheme, CUSTOMERS, owned.base).test(remote, alpha=1e-9)
    assert result.decision == "inconclusive" and result.p_value == 1.0 and result.queries == 0
    assert "cannot ask this suspect" in result.summary and "weights are not available" in result.summary
    assert result.details["applies"] is False
