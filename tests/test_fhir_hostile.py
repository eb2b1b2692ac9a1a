"""Broken and hostile HTTP input (issue 11): every answer a 4xx or 503 with its error body, never
a 500 from the input, and an error never costs the connection it came on.

Input refused at the edge (nesting, YAML aliases, unknown contained types, body limits, the kept
connection, the 500 of a bug) is ``@sqlite_only`` (conftest): it never reaches the store. What
reaches the store and differs by backend runs on both: numbers beyond 32 and 64 bits in
versions and paging, NUL in ids and identifiers (PostgreSQL refuses NUL in text), the same ANC
twice in one transaction; and the store unavailable is ``@postgresql_only``."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from select import select as readable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.store import tables
from tests.conftest import POSTGRES_URL, postgresql_only, run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_observation import ANC, AT, FHIR
from tests.test_service import registry

LIMIT = 64 * 1024
DEEP = "[" * 1000 + "]" * 1000


def _boom(app: FastAPI) -> None:
    """A test-only route that fails the way an unforeseen bug would."""

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fhir/test-boom", boom, methods=["GET"])
    app.add_api_route("/test-boom", boom, methods=["GET"])


@pytest.fixture
def base(service: RemsService, engine: Engine) -> Iterator[str]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine, extend=_boom, http_max_body_bytes=LIMIT) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers={"Content-Type": FHIR, **AT}) as http:
        yield http


def issue_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["code"]


def observation_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(tables.FhirResourceRow)).scalar_one()


# 7. JSON nesting


@pytest.mark.parametrize("path", ["/fhir/Observation", "/fhir", "/fhir/Observation/$validate"])
@sqlite_only
def test_json_nested_a_thousand_deep_is_400_under_fhir(client: httpx.Client, path: str) -> None:
    answer = client.post(path, content='{"resourceType":"Observation","x":' + DEEP + "}")
    assert answer.status_code == 400
    assert issue_code(answer) == "structure"


@sqlite_only
def test_json_just_over_the_nesting_limit_is_400(client: httpx.Client) -> None:
    body = copy.deepcopy(ANC)
    body["extension"] = [{"url": "urn:x", "valueString": "x"}]
    nested: Any = "x"
    for _ in range(70):
        nested = [nested]
    body["note"] = [{"text": "x", "extension": nested}]
    answer = client.post("/fhir/Observation", json=body)
    assert answer.status_code == 400
    assert "nested deeper than 64" in answer.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("media_type", ["application/json", "application/yaml"])
@sqlite_only
def test_json_nested_a_thousand_deep_is_400_on_admin(client: httpx.Client, media_type: str) -> None:
    answer = client.post("/admin/registry", content=DEEP, headers={"Content-Type": media_type})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_body"


@sqlite_only
def test_yaml_aliases_on_admin_are_400_before_anything_expands(client: httpx.Client) -> None:
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    answer = client.post(
        "/admin/registry", content="\n".join(laughs), headers={"Content-Type": "application/yaml"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_body"
    assert "anchors and aliases are not accepted" in answer.json()["detail"]


@sqlite_only
def test_scheduled_work_nested_a_thousand_deep_is_a_4xx(client: httpx.Client) -> None:
    answer = client.post(
        "/admin/scheduled-work",
        content='{"patients":' + DEEP + "}",
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= answer.status_code < 500
    assert "error" in answer.json()


# 9. validator failures


@pytest.mark.parametrize(
    "contained", [{"resourceType": "NoSuchType", "id": "x"}, {"resourceType": 7}, "text", [1]]
)
@sqlite_only
def test_a_contained_resource_of_no_known_type_is_422(
    client: httpx.Client, engine: Engine, contained: Any
) -> None:
    body = copy.deepcopy(ANC) | {"contained": [contained]}
    answer = client.post("/fhir/Observation", json=body)
    assert answer.status_code in (400, 422)
    assert issue_code(answer) in ("invalid", "structure")
    assert "NoSuchType" not in answer.text
    assert observation_rows(engine) == 0


# 10. numbers and NUL in reads


@pytest.mark.parametrize("version", ["99999999999999999999", "2147483648", "0", "-1"])
def test_a_version_beyond_any_stored_is_404(client: httpx.Client, version: str) -> None:
    created = client.post("/fhir/Observation", json=ANC).json()
    answer = client.get(f"/fhir/Observation/{created['id']}/_history/{version}")
    assert answer.status_code in (400, 404)
    assert issue_code(answer) in ("not-found", "invalid", "value")


@pytest.mark.parametrize(
    "query",
    ["_offset=3e28", "_offset=99999999999999999999", "_offset=2147483648", "_count=1e400"],
)
def test_huge_paging_numbers_are_400(client: httpx.Client, query: str) -> None:
    answer = client.get(f"/fhir/Observation?{query}")
    assert answer.status_code == 400
    assert issue_code(answer) in ("invalid", "value")


def test_a_huge_count_is_capped(client: httpx.Client) -> None:
    answer = client.get("/fhir/Observation?_count=99999999999999999999")
    assert answer.status_code == 200
    assert answer.json()["resourceType"] == "Bundle"


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Observation/a%00b",
        "/fhir/Observation/a%00b/_history/1",
        "/fhir/Patient/a%00b",
        "/fhir/Patient/a%00b/$rems-status",
        "/fhir/Patient?identifier=urn:x|a%00b",
        "/fhir/Observation?patient:identifier=urn:x|a%00b",
        "/fhir/Observation?patient=a%00b",
        "/fhir/Questionnaire/a%00b",
    ],
)
def test_a_nul_in_an_id_or_identifier_is_400(client: httpx.Client, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 400
    assert issue_code(answer) == "value"


def test_a_nul_in_a_resources_identifier_is_a_4xx(client: httpx.Client, engine: Engine) -> None:
    body = copy.deepcopy(ANC)
    body["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB\u00001"}]
    answer = client.post("/fhir/Observation", json=body)
    assert 400 <= answer.status_code < 500
    assert issue_code(answer) in ("value", "invalid")
    assert "LAB" not in answer.text


# 11. body limit


@sqlite_only
def test_a_body_announced_too_large_is_413_before_it_is_read(base: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    head = (
        "POST /fhir/Observation HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {FHIR}\r\nContent-Length: 50000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + b"{" * 1024)  # 50 MB announced, 1 KB sent
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"too-long"' in answer


@sqlite_only
def test_a_content_length_of_thousands_of_digits_is_a_4xx(base: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    head = (
        "POST /fhir/Observation HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {FHIR}\r\nContent-Length: {'9' * 5000}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + b"{}")
        answer = _read_all(sock)
    assert answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), answer[:40]


@sqlite_only
def test_a_chunked_body_past_the_limit_is_413(base: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    head = (
        "POST /fhir/Observation HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {FHIR}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        for _ in range(LIMIT // 4096 + 4):  # past the limit, never the final chunk
            if readable([sock], [], [], 0.05)[0]:
                break  # answered: the server stopped reading
            sock.sendall(chunk)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"too-long"' in answer


@pytest.mark.parametrize("path", ["/admin/registry", "/admin/scheduled-work"])
@sqlite_only
def test_a_body_past_the_limit_on_admin_is_413_json(client: httpx.Client, path: str) -> None:
    answer = client.post(
        path, content=b" " * (LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"


@sqlite_only
def test_a_body_under_the_limit_is_taken(client: httpx.Client) -> None:
    body = copy.deepcopy(ANC) | {"text": {"status": "generated", "div": _div(LIMIT // 2)}}
    assert client.post("/fhir/Observation", json=body).status_code == 201


def _div(size: int) -> str:
    return '<div xmlns="http://www.w3.org/1999/xhtml">' + "a" * size + "</div>"


# 8. an error keeps the connection


@pytest.mark.parametrize(
    "first",
    [
        "GET /fhir/test-boom HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /test-boom HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /fhir/Observation?_offset=3e28 HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /fhir/Observation HTTP/1.1\r\nHost: t\r\nContent-Type: application/fhir+json\r\n"
        f"Content-Length: {len(DEEP)}\r\n\r\n{DEEP}",
    ],
)
@sqlite_only
def test_an_error_keeps_the_kept_alive_connection(base: str, first: str) -> None:
    """Two pipelined requests on one connection: the second is answered after the first's
    error."""
    port = int(base.rsplit(":", 1)[1])
    second = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((first + second).encode())
        answers = _read_all(sock)
    assert answers.count(b"HTTP/1.1 ") == 2, answers[:300]
    assert b'"status":"ok"' in answers
    assert b"a bug" not in answers  # the exception's text is never shown


@sqlite_only
def test_an_unexpected_error_is_a_500_operation_outcome(client: httpx.Client) -> None:
    answer = client.get("/fhir/test-boom")
    assert answer.status_code == 500
    assert issue_code(answer) == "exception"
    plain = client.get("/test-boom")
    assert plain.status_code == 500 and plain.json()["error"] == "internal_error"


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return received
        if not data:
            return received
        received += data


# 2 (the FHIR part). The same ANC twice in one transaction


def test_a_transaction_with_the_same_anc_twice_stores_one_result(
    client: httpx.Client, service: RemsService
) -> None:
    entry = {"resource": ANC, "request": {"method": "POST", "url": "Observation"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]}
    answer = client.post("/fhir", json=bundle)
    assert answer.status_code in (200, 201), answer.text[:300]
    assert answer.json()["type"] == "transaction-response"
    specimen = tables.AncResultRow.specimen_key == "urn:acc|ACC-9"
    current = select(func.count()).where(tables.AncResultRow.current, specimen)
    with service.writer.engine.connect() as conn:
        assert conn.execute(current).scalar_one() == 1


# 6. the store unavailable: 503 + Retry-After, and recovery without a restart


@contextmanager
def database_blocked(db_url: str) -> Iterator[None]:
    """The database refuses every connection (as during a restart or failover)."""
    assert POSTGRES_URL is not None
    name = make_url(db_url).database
    admin = create_engine(POSTGRES_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def assert_unavailable(answer: httpx.Response, fhir: bool = True) -> None:
    assert answer.status_code == 503, answer.text[:300]
    assert int(answer.headers["Retry-After"]) > 0
    if fhir:
        assert issue_code(answer) == "transient"
    else:
        assert answer.json()["error"] == "store_unavailable"
    assert "postgresql" not in answer.text.lower() and "MRN" not in answer.text


@postgresql_only
def test_the_store_unavailable_is_503_and_the_gateway_recovers(
    client: httpx.Client, db_url: str
) -> None:
    created = client.post("/fhir/Observation", json=ANC).json()
    other = copy.deepcopy(ANC)
    other["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB-2"}]
    with database_blocked(db_url):
        assert_unavailable(client.get(f"/fhir/Observation/{created['id']}"))
        assert_unavailable(client.get(f"/fhir/Observation/{created['id']}/_history/1"))
        assert_unavailable(client.get("/fhir/Observation"))
        assert_unavailable(client.post("/fhir/Observation", json=other))
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": other, "request": {"method": "POST", "url": "Observation"}}],
        }
        assert_unavailable(client.post("/fhir", json=bundle))
        registry_block = registry().model_dump(mode="json", exclude_none=True)
        admin = client.post(
            "/admin/registry", json=registry_block, headers={"Content-Type": "application/json"}
        )
        assert_unavailable(admin, fhir=False)
    assert client.get(f"/fhir/Observation/{created['id']}").status_code == 200
    assert client.post("/fhir/Observation", json=other).status_code == 201
