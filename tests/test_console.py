"""The operator console without a browser (docs/contracts.md §8): who gets in, the session
cookie, CSRF, the headers of every page, and the `access` audit record of every view of a
patient's data — on a real gateway app on a loopback port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.audit_trail import write_checkpoint
from gateway.app.service import RemsService
from gateway.console.chart import anc_chart
from gateway.console.pages import CSP
from gateway.console.session import COOKIE, Sessions
from rems_core.model import AncCategory, AncResult, Designation
from rems_core.rulepack import PackLibrary
from tests.conftest import committed, sqlite_only
from tests.console_data import BORN, FAMILY, GIVEN, MRN, TOKEN, Seeded, seed
from tests.http_server import running_app
from tests.smart_tokens import TestClient, access_token, smart_settings

pytestmark = sqlite_only


@pytest.fixture
def console(service: RemsService, engine: Engine) -> Iterator[tuple[str, Seeded]]:
    seeded = seed(service)
    with running_app(service, engine, admin_token=TOKEN) as base:
        yield base, seeded


def signed_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base)
    answer = client.post("/console/sign-in", data={"token": TOKEN, "next": "/console/review"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/review"
    return client


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_pages_need_a_session(console: tuple[str, Seeded]) -> None:
    base, seeded = console
    page = httpx.get(base + "/console/patients/" + seeded.patient)
    assert page.status_code == 303
    assert (
        page.headers["location"]
        == f"/console/sign-in?next=%2Fconsole%2Fpatients%2F{seeded.patient}"
    )
    assert FAMILY not in page.text
    act = httpx.post(base + f"/console/review/{seeded.held}/discard", data={"reason": "x"})
    assert act.status_code == 401 and "Sign in first" in act.text
    forged = httpx.get(base + "/console/messages", cookies={COOKIE: "e30.0000"})
    assert forged.status_code == 303


def test_a_wrong_token_is_refused_and_the_right_one_opens_a_session(
    console: tuple[str, Seeded],
) -> None:
    base, _ = console
    wrong = httpx.post(base + "/console/sign-in", data={"token": "not-it"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    right = httpx.post(base + "/console/sign-in", data={"token": TOKEN, "next": "//evil.test/"})
    assert right.status_code == 303 and right.headers["location"] == "/console/messages"
    cookie = right.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= flags
    assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
    assert "secure" not in flags  # plain HTTP on loopback: a Secure cookie would never return


def test_signing_out_ends_the_session_wherever_its_cookie_went(
    console: tuple[str, Seeded],
) -> None:
    client = signed_in(console[0])
    copied = client.cookies[COOKIE]
    page = client.get("/console/messages")
    assert client.post("/console/sign-out", data={"csrf": csrf_of(page)}).status_code == 303
    again = httpx.get(console[0] + "/console/messages", cookies={COOKIE: copied})
    assert again.status_code == 303


def test_a_form_without_its_csrf_token_is_refused(
    console: tuple[str, Seeded], service: RemsService
) -> None:
    base, seeded = console
    client = signed_in(base)
    path = f"/console/review/{seeded.held}/discard"
    for form in ({"reason": "test message"}, {"reason": "test message", "csrf": "guessed"}):
        refused = client.post(path, data=form)
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert committed(service, lambda store: store.review_item(seeded.held))["status"] == "open"
    page = client.get(f"/console/review/{seeded.held}")
    done = client.post(path, data={"reason": "test message", "csrf": csrf_of(page)})
    assert done.status_code == 303
    assert committed(service, lambda store: store.review_item(seeded.held))["status"] == "discarded"


def test_every_console_response_carries_the_security_headers(
    console: tuple[str, Seeded],
) -> None:
    base, seeded = console
    client = signed_in(base)
    paths = [
        "/console/messages?disposition=unmatched",
        f"/console/messages/{seeded.hostile_message}",
        "/console/messages/999999",
        "/console/review",
        f"/console/review/{seeded.held}",
        "/console/patients",
        f"/console/patients/{seeded.patient}",
        "/console/decisions",
        "/console/tasks?status=all",
        "/console/audit",
        "/console/static/console.css",
        "/console",
    ]
    anonymous = [httpx.get(base + "/console/sign-in"), httpx.get(base + "/console/audit")]
    for answer in [*(client.get(p) for p in paths), *anonymous]:
        assert answer.status_code in (200, 303, 404), answer.request.url
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "<style" not in answer.text and "style=" not in answer.text
        assert "<script" not in answer.text


def test_each_view_of_a_patients_data_is_an_access_record_without_phi(
    console: tuple[str, Seeded], service: RemsService
) -> None:
    base, seeded = console
    client = signed_in(base)
    patient = client.get(f"/console/patients/{seeded.patient}")
    assert patient.status_code == 200 and FAMILY in patient.text and MRN in patient.text
    assert client.get(f"/console/messages/{seeded.hostile_message}").status_code == 200
    assert client.get(f"/console/review/{seeded.held}").status_code == 200
    assert client.get("/console/messages").status_code == 200  # a listing is no patient view
    records = committed(service, lambda store: list(store.audit_records()))
    access = [r for r in records if r.kind == "access"]
    assert [(r.actor, r.channel, r.subject, r.input_ref) for r in access] == [
        ("admin-token", "console", seeded.patient, f"/console/patients/{seeded.patient}"),
        (
            "admin-token",
            "console",
            seeded.patient,
            f"/console/messages/{seeded.hostile_message}",
        ),
        ("admin-token", "console", None, f"/console/review/{seeded.held}"),
    ]
    text = repr([asdict(r) for r in access])
    for phi in (FAMILY, GIVEN, BORN, MRN, "NOBODY77", "JANE"):
        assert phi not in text


def test_a_smart_admin_token_signs_in_as_its_client(
    service: RemsService, engine: Engine, tmp_path: Path
) -> None:
    operator = TestClient.ec("operator", ["admin"])
    reader = TestClient.ec("reader", ["system/Patient.r"])
    with running_app(service, engine, **smart_settings(tmp_path, [operator, reader])) as base:
        token = access_token(base, operator, "admin")
        answer = httpx.post(base + "/console/sign-in", data={"token": token})
        assert answer.status_code == 303
        assert "secure" in answer.headers["set-cookie"].lower()  # https public base URL
        page = httpx.get(base + "/console/audit", cookies={COOKIE: answer.cookies[COOKIE]})
        assert "Signed in as smart:operator" in page.text
        other = access_token(base, reader, "system/Patient.r")
        assert httpx.post(base + "/console/sign-in", data={"token": other}).status_code == 401


def test_the_console_is_shut_without_an_admin_credential(
    service: RemsService, engine: Engine
) -> None:
    with running_app(service, engine) as base:
        page = httpx.get(base + "/console/sign-in")
        assert page.status_code == 503 and "admin_token" in page.text
        assert httpx.post(base + "/console/sign-in", data={"token": "x"}).status_code == 503


def test_a_tampered_or_expired_cookie_opens_nothing() -> None:
    sessions = Sessions(60)
    session, cookie = sessions.open("admin-token", now=1000)
    assert sessions.read(cookie, now=1059) == session
    assert sessions.read(cookie, now=1060) is None
    payload, signature = cookie.split(".")
    assert sessions.read(f"{payload}x.{signature}", now=1001) is None
    assert Sessions(60).read(cookie, now=1001) is None  # another process's key


def test_the_chart_draws_the_ben_bands_for_a_ben_patient() -> None:
    pack = PackLibrary().get("clozapine-rems-2021")
    drawn = datetime(2021, 12, 1, 8, tzinfo=UTC)
    ancs = [AncResult(700, drawn, AncCategory.BEN_NEUTROPENIA, True)]
    chart = anc_chart(pack, Designation.BEN, ancs, [], [], UTC)
    assert [(b.category, b.low) for b in chart.bands] == [
        ("normal", 1000),
        ("ben_neutropenia", 500),
        ("severe", 0),
    ]
    assert chart.threshold == 500 and len(chart.points) == 1
    general = anc_chart(pack, Designation.GENERAL, ancs, [], [], UTC)
    assert [b.low for b in general.bands] == [1500, 1000, 500, 0] and general.threshold == 1000


def test_a_patient_is_found_by_an_identifier_posted_with_the_form(
    console: tuple[str, Seeded],
) -> None:
    base, seeded = console
    client = signed_in(base)
    csrf = csrf_of(client.get("/console/patients"))
    for given in (MRN, f"GH|{MRN}", seeded.patient):
        found = client.post("/console/patients", data={"identifier": given, "csrf": csrf})
        assert found.status_code == 303, given
        assert found.headers["location"] == f"/console/patients/{seeded.patient}"
    other = client.post("/console/patients", data={"identifier": f"NIST|{MRN}", "csrf": csrf})
    assert other.status_code == 200 and "No registry patient" in other.text
    assert client.post("/console/patients", data={"identifier": MRN}).status_code == 403


def test_decisions_tasks_and_the_audit_chain_with_its_checkpoint(
    service: RemsService, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    seeded = seed(service)
    head = write_checkpoint(db_url, tmp_path / "checkpoint.json")
    settings = {"admin_token": TOKEN, "audit_checkpoint": tmp_path / "checkpoint.json"}
    with running_app(service, engine, **settings) as base:
        client = signed_in(base)
        decisions = client.get("/console/decisions", params={"patient": seeded.patient})
        assert seeded.outcome.replace("_", " ") in decisions.text
        assert "1 in all" in decisions.text
        tasks = client.get("/console/tasks", params={"status": "all"})
        assert "unmatched-result" in tasks.text
        audit = client.get("/console/audit")
        assert "The chain verifies" in audit.text and "it holds the checkpoint" in audit.text
        assert f"record {head.seq} · <code>{head.hash}</code>" in audit.text


def test_a_stored_message_is_replayed_from_its_page(console: tuple[str, Seeded]) -> None:
    base, seeded = console
    client = signed_in(base)
    path = f"/console/messages/{seeded.hostile_message}"
    page = client.get(path)
    assert "Replay under the current configuration" in page.text
    assert client.post(path + "/replay", data={}).status_code == 403
    replayed = client.post(path + "/replay", data={"csrf": csrf_of(page)})
    assert replayed.status_code == 200
    assert "Replayed: accepted → accepted" in replayed.text
    assert f"already on file for {seeded.patient}: nothing new stored" in replayed.text
