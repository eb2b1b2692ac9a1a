"""The review queue at its edges: `/admin/review` on a real HTTP server, `rems-gateway review` as
an operator runs it (a real process on a real SQLite file), and the queue's metric."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.bootstrap import bootstrap
from gateway.app.service import RemsService
from rems_core.store.db import upgrade
from rems_core.store.review_repo import ReviewFilter
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.test_cli import cli
from tests.test_review import OID, load, oru, receive

# The queue's HTTP routes, terminal and metric; the queue in the store (link, discard, retention)
# is test_review's, on both backends (conftest: sqlite_only).
pytestmark = sqlite_only

TOKEN = "review-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(service: RemsService, engine: Engine) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    with (
        running_app(service, engine, admin_token=TOKEN) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client, ids


def test_the_queue_lists_masked_values_and_reveals_them_when_asked(
    admin: tuple[httpx.Client, dict[str, str]], service: RemsService
) -> None:
    client, _ = admin
    receive(service, oru("X-77801^^^NORTHLAB^MR", "H1"))
    assert client.get("/admin/review").status_code == 401
    listed = client.get("/admin/review", headers=ADMIN).json()
    assert listed["total"] == 1
    (item,) = listed["items"]
    assert item["candidates"][0] | {"value": "*****01"} == item["candidates"][0]
    assert "X-77801" not in str(listed)
    assert item["kind"] == "unmatched" and item["results"][0]["value"] == "0.8"
    revealed = client.get(f"/admin/review/{item['id']}?reveal=true", headers=ADMIN).json()
    assert revealed["candidates"][0]["value"] == "X-77801"
    for bad in ("kind=nobody", "age=week", "status=closed"):
        refused = client.get(f"/admin/review?{bad}", headers=ADMIN)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_filter"
    assert client.get("/admin/review?age=36500d", headers=ADMIN).json()["total"] == 0
    assert client.get("/admin/review/rev-none", headers=ADMIN).status_code == 404


def test_link_and_discard_over_http(
    admin: tuple[httpx.Client, dict[str, str]], service: RemsService
) -> None:
    client, ids = admin
    receive(service, oru("X-1^^^NORTHLAB", "H2"))
    receive(service, oru("X-2^^^NORTHLAB", "H3"))
    first, second = client.get("/admin/review", headers=ADMIN).json()["items"]
    bad = client.post(f"/admin/review/{first['id']}/link", json={"patient": "RP-0"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["error"] == "unknown_patient"
    linked = client.post(
        f"/admin/review/{first['id']}/link", json={"patient": ids["P1"]}, headers=ADMIN
    )
    assert linked.status_code == 200
    assert linked.json() | {"filed": [first["id"]], "identifiers_added": 1} == linked.json()
    again = client.post(
        f"/admin/review/{first['id']}/link", json={"patient": ids["P1"]}, headers=ADMIN
    )
    assert again.status_code == 409 and again.json()["error"] == "review_closed"
    no_reason = client.post(f"/admin/review/{second['id']}/discard", json={}, headers=ADMIN)
    assert no_reason.status_code == 422
    discarded = client.post(
        f"/admin/review/{second['id']}/discard", json={"reason": "test feed"}, headers=ADMIN
    )
    assert discarded.json() == {"item": second["id"], "status": "discarded"}
    assert client.get("/admin/review", headers=ADMIN).json()["total"] == 0
    closed = client.get("/admin/review?status=all", headers=ADMIN).json()["items"]
    assert {(i["status"], i["resolved_by"]) for i in closed} == {
        ("linked", "admin-token"),
        ("discarded", "admin-token"),
    }


def test_the_queue_size_is_a_metric(
    admin: tuple[httpx.Client, dict[str, str]], service: RemsService
) -> None:
    client, _ = admin
    receive(service, oru("X-3^^^NORTHLAB", "H4"))
    metrics = client.get("/metrics").text
    assert 'rems_review_items{kind="unmatched",status="open"} 1.0' in metrics
    assert 'rems_review_items{kind="merge",status="open"} 0.0' in metrics


def test_an_operator_lists_shows_links_and_discards_at_the_terminal(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'review.db'}"
    upgrade(db)
    with bootstrap(db) as gateway:
        ids = load(gateway.service, ("P1", [(OID, "MRN123")]))
        for n, pid in enumerate(("Q-55501^^^NORTHLAB", "Q-55502^^^NORTHLAB")):
            receive(gateway.service, oru(pid, f"T{n}"))
    listed = cli("review", "list", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert "Q-55501" not in listed.stdout and "NORTHLAB|*****01" in listed.stdout
    assert listed.stdout.strip().endswith("2 items")
    first, second = re.findall(r"^(rev-[0-9a-f]+)", listed.stdout, re.M)
    shown = cli("review", "show", first, "--db", db, "--reveal")
    assert shown.returncode == 0 and re.search(r"value: Q-5550[12]\b", shown.stdout)
    linked = cli("review", "link", first, "--patient", ids["P1"], "--db", db)
    assert linked.returncode == 0 and "1 item(s) filed" in linked.stdout, linked.stderr
    twice = cli("review", "link", first, "--patient", ids["P1"], "--db", db)
    assert twice.returncode == 1 and "linked already" in twice.stderr
    discarded = cli("review", "discard", second, "--reason", "not our patient", "--db", db)
    assert discarded.returncode == 0
    assert cli("review", "list", "--db", db).stdout.strip() == "0 items"
    assert cli("review", "list", "--kind", "nobody", "--db", db).returncode == 2
    with bootstrap(db) as gateway:
        found, _ = run(gateway.reads.review_items(ReviewFilter(status="discarded")))
    assert found[0]["resolved_by"].startswith("cli:")
