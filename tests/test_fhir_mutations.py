"""Hypothesis mutations of the valid resources in fixtures/fhir/, posted to a real server on a
real database (issue 11): never a 5xx, every error an OperationOutcome. Beside the schemathesis
run of test_openapi_fuzz.py, which follows the OpenAPI document; this one follows FHIR.

Bounded for CI (EXAMPLES, derandomized); tests/fuzz/fhir_mutations.py runs the same for longer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from gateway.app.bootstrap import assemble
from gateway.app.context import UnitContext
from gateway.app.values import Source
from gateway.scenarios.runner import DatabaseFactory
from rems_core.store.db import make_engine
from tests.conftest import PACKS, run
from tests.fhir_mutations import check_answer, fixtures, mutated, send
from tests.http_server import running_app
from tests.test_service import registry

EXAMPLES = 300
BODIES = fixtures()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    factory = DatabaseFactory()
    engine = make_engine(factory.fresh_url())
    application = assemble(engine, UnitContext(PACKS, rules="clozapine-rems-2021"))
    run(application.service.load_registry(registry(), Source("test")))
    headers = {"X-Clinical-Time": "2022-03-02T09:00:00Z"}
    try:
        with (
            running_app(application.service, engine) as base,
            httpx.Client(base_url=base, headers=headers, timeout=30) as http,
        ):
            yield http
    finally:
        application.writer.stop()
        engine.dispose()
        factory.close()


def test_every_fixture_is_accepted_unmutated(client: httpx.Client) -> None:
    """The mutations start from resources the gateway takes (else they test little)."""
    for body in BODIES:
        answer = send(client, "/fhir/" + body["resourceType"] + "/$validate", body)
        if body["resourceType"] == "Parameters":
            continue
        assert answer.status_code == 200, (body.get("id"), answer.text[:300])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated(BODIES))
def test_a_mutated_resource_never_gets_a_5xx(
    client: httpx.Client, case: tuple[str, dict[str, Any]]
) -> None:
    endpoint, body = case
    check_answer(send(client, endpoint, body))
