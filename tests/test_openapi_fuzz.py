"""Schemathesis over our own OpenAPI document, against a real server on a real database:
no 5xx, and every answer matches what the document says (status, content type, body schema).

Bounded: a few examples per operation, so the whole run stays within seconds per route."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app.bootstrap import Gateway, assemble
from gateway.app.context import UnitContext
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.app.writer import Writer
from gateway.config import Settings
from gateway.http.app import create_app
from gateway.scenarios.runner import DatabaseFactory
from rems_core.store.db import make_engine
from tests.conftest import PACKS, run
from tests.http_server import running_app
from tests.test_service import registry

ADMIN = "fuzz-admin-token"
EXAMPLES = 12


def _document() -> dict:
    """The OpenAPI document of the app as `serve` builds it (no server needed to read it)."""
    engine = make_engine("sqlite://")
    ctx = UnitContext(PACKS)
    writer = Writer(engine)  # never started: the document needs no database
    gateway = Gateway(engine, writer, RemsService(writer, ctx), RemsReads(engine, ctx), ctx)
    return create_app(gateway, Settings(auth="development", admin_token=ADMIN)).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    factory = DatabaseFactory()
    url = factory.fresh_url()
    engine = make_engine(url)
    application = assemble(engine, UnitContext(PACKS, rules="clozapine-rems-2021"))
    writer, service = application.writer, application.service
    run(service.load_registry(registry(), Source("test")))
    try:
        with running_app(service, engine, admin_token=ADMIN, clock="system") as base:
            yield base
    finally:
        writer.stop()
        engine.dispose()
        factory.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
def test_no_server_errors_and_answers_match_the_document(
    case: schemathesis.Case, base_url: str
) -> None:
    started = datetime.now(UTC)
    case.call_and_validate(
        base_url=base_url,
        headers={"Authorization": f"Bearer {ADMIN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
    assert (datetime.now(UTC) - started).total_seconds() < 30
