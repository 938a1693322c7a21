"""Schemathesis against the served OpenAPI schema: valid and invalid requests, never a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

EXAMPLES = 60  # per operation; ~10 s for the whole schema on 2 cores


def test_no_server_errors_on_generated_requests(net, run_server) -> None:
    with run_server(net, rate=1e6, burst=1e6) as srv:
        auth = {"Authorization": f"Bearer {srv.clients.add('fuzzer').token}"}
        schema = schemathesis.openapi.from_dict(srv.http.get("/openapi.json").json())
        schema.config.update(base_url=srv.url)
        seen: dict[str, set[int]] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = (operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)
                        | operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))

            @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case) -> None:
                response = case.call(headers=auth, timeout=10)
                seen.setdefault(operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (operation.label, case.body, response.text[:300])

            check()
        assert {200, 422} <= seen["POST /v1/predict"]  # both valid batches and refused ones were generated
        answered = srv.server.audit.count()
        assert srv.http.get("/metrics").text.count("\ntracemark_queries_answered_total ") == 1 and answered > 0
