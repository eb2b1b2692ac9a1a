"""Notifications (docs/contracts.md §7): FHIR Subscriptions (R4 topic-based backport, rest-hook)
created over FHIR on a real app, queued in the unit of work of the change, and delivered by the
deliverer from the durable queue to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine, select

from gateway.app.bootstrap import assemble
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.units import notifications
from gateway.app.values import ResourceDraft, SubscriptionSubmission
from gateway.notify import Deliverer, DeliveryPolicy
from mappings.fhir.content import content_hash
from mappings.fhir.subscription import (
    DECISION_TOPIC,
    FILTER_CRITERIA,
    PAYLOAD_CONTENT,
    TASK_TOPIC,
    read_subscription,
)
from rems_core.model import Decision, Outcome
from rems_core.store import tables
from rems_core.store.db import make_engine
from rems_core.store.fhir_repo import ResourceIndex
from rems_core.store.repo import Store
from tests.builders import UNCERTIFIED, dispense
from tests.conftest import committed, run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_dispense import FIXTURES
from tests.test_serve import MRN as SERVE_MRN
from tests.test_serve import PHI, free_port, start
from tests.test_serve import registry as serve_registry
from tests.test_service import MRN, SOURCE, registry

FHIR = "application/fhir+json"
BASE = "http://gateway.test/fhir"  # the deliverer's FHIR base: focus fullUrls start with it
POLICY = DeliveryPolicy(attempts=3, first_backoff=0.05, max_backoff=0.2, timeout=2.0, poll=0.2)
T = TypeVar("T")


# --- a rest-hook endpoint on loopback ---------------------------------------------------------


@dataclass
class Received:
    bundle: dict[str, Any]
    headers: dict[str, str]
    status: int  # what the receiver answered


class Receiver:
    """Records every notification it is sent and answers with the statuses queued in
    ``answers`` (then 200); while ``held`` is clear, each request waits for it."""

    def __init__(self, port: int = 0) -> None:
        self.answers: list[int] = []
        self.received: list[Received] = []
        self.held = threading.Event()
        self.held.set()
        self.arrived = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.held.wait()
                with receiver.arrived:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.received.append(Received(body, dict(self.headers), status))
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def taken(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    def wait_for(self, count: int) -> list[Received]:
        """The first ``count`` notifications taken (2xx)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.taken()) >= count, timeout=20):
                pytest.fail(f"the receiver took {len(self.taken())} notifications, not {count}")
            return self.taken()[:count]

    def close(self) -> None:
        self.held.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


# --- helpers --------------------------------------------------------------------------------


def subscription(
    endpoint: str,
    topic: str = DECISION_TOPIC,
    filters: tuple[str, ...] = (),
    payload: str = "id-only",
    **fields: Any,
) -> dict[str, Any]:
    """A Subscription of the backport IG's shape."""
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "REMS decisions for the pharmacy system",
        "criteria": topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR,
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload}]},
        },
    }
    if filters:
        body["_criteria"] = {
            "extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]
        }
    return body | fields


@contextmanager
def fhir_with_deliverer(
    service: RemsService, engine: Engine, policy: DeliveryPolicy = POLICY
) -> Iterator[httpx.Client]:
    deliverer = Deliverer(service, RemsReads(engine, service.ctx), policy, BASE)
    with (
        running_app(service, engine, companions=[deliverer]) as base,
        httpx.Client(base_url=base + "/fhir", headers={"Content-Type": FHIR}) as client,
    ):
        yield client


@pytest.fixture
def patient_id(service: RemsService) -> str:
    """The REMS id of the registry's patient P1."""
    return run(service.load_registry(registry(), SOURCE))["P1"]


@pytest.fixture
def fhir(service: RemsService, engine: Engine, patient_id: str) -> Iterator[httpx.Client]:
    with fhir_with_deliverer(service, engine) as client:
        yield client


def eventually(check: Callable[[], T | None], what: str) -> T:
    """``check``'s first answer that is not None (or false), waiting for the deliverer."""
    done = threading.Event()
    for _ in range(400):
        found = check()
        if found:
            return found
        done.wait(0.05)
    pytest.fail(f"never happened: {what}")


def decide(service: RemsService, request_id: str, **fields: Any) -> Decision:
    request = dispense("2022-03-02", request_id=request_id, **fields)
    return run(service.decide_dispense(MRN, request, SOURCE))


def queued(service: RemsService) -> list[dict[str, Any]]:
    table = tables.NotificationRow.__table__

    def read(store: Store) -> list[dict[str, Any]]:
        rows = store.conn.execute(select(table).order_by(table.c.id)).mappings()
        return [dict(r) for r in rows]

    return committed(service, read)


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """The SubscriptionStatus leading a notification Bundle, as {parameter: value}."""
    parameters = bundle["entry"][0]["resource"]
    assert parameters["resourceType"] == "Parameters"
    found: dict[str, Any] = {}
    for p in parameters["parameter"]:
        if "part" in p:
            found[p["name"]] = {q["name"]: _value(q) for q in p["part"]}
        else:
            found[p["name"]] = _value(p)
    return found


def _value(parameter: dict[str, Any]) -> Any:
    return next(v for k, v in parameter.items() if k.startswith("value"))


def subscribe(client: httpx.Client, body: dict[str, Any]) -> str:
    created = client.post("/Subscription", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "requested"
    return str(created.json()["id"])


def read_status(client: httpx.Client, subscription_id: str) -> str:
    return str(client.get(f"/Subscription/{subscription_id}").json()["status"])


def active(client: httpx.Client, subscription_id: str) -> None:
    eventually(lambda: read_status(client, subscription_id) == "active", "active")


# --- over FHIR, to a real receiver ---------------------------------------------------------------


def test_a_subscription_shakes_hands_then_hears_of_each_decision(
    fhir: httpx.Client, service: RemsService, receiver: Receiver, patient_id: str
) -> None:
    subscription_id = subscribe(fhir, subscription(receiver.url))
    (handshake,) = receiver.wait_for(1)
    assert handshake.bundle["type"] == "history"
    assert handshake.headers["Content-Type"] == FHIR
    status = status_of(handshake.bundle)
    assert status["type"] == "handshake" and status["status"] == "requested"
    assert status["topic"] == DECISION_TOPIC
    assert status["subscription"] == {"reference": f"Subscription/{subscription_id}"}
    assert status["events-since-subscription-start"] == "0"
    active(fhir, subscription_id)

    decision = decide(service, "req-1")
    event = receiver.wait_for(2)[1].bundle
    status = status_of(event)
    focus = f"GuidanceResponse/{decision.decision_id}"
    assert status["type"] == "event-notification" and status["status"] == "active"
    assert status["events-since-subscription-start"] == "1"
    assert status["notification-event"]["event-number"] == "1"
    assert status["notification-event"]["focus"] == {"reference": focus}
    assert event["entry"][1]["fullUrl"] == f"{BASE}/{focus}"
    assert "resource" not in event["entry"][1]  # id-only

    response = fhir.get(f"/{focus}")
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == {"reference": f"Patient/{patient_id}"}
    assert response.json()["status"] == "success" and decision.outcome == Outcome.AUTHORIZED
    assert fhir.get("/GuidanceResponse/dec-unknown").status_code == 404

    queried = fhir.get(f"/Subscription/{subscription_id}/$status").json()
    assert queried["type"] == "searchset"
    assert status_of(queried) | {"subscription": None} == {
        "subscription": None,
        "topic": DECISION_TOPIC,
        "status": "active",
        "type": "query-status",
        "events-since-subscription-start": "1",
    }
    found = fhir.get("/Subscription", params={"status": "active"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [subscription_id]
    assert fhir.get("/Subscription", params={"status": "off"}).json()["total"] == 0


def test_filters_choose_the_events_and_full_resource_sends_the_focus(
    fhir: httpx.Client, service: RemsService, receiver: Receiver, patient_id: str
) -> None:
    body = subscription(
        receiver.url,
        filters=(f"GuidanceResponse?outcome=denied&patient={patient_id}",),
        payload="full-resource",
    )
    body["channel"]["header"] = ["Authorization: Bearer hook-secret"]
    subscription_id = subscribe(fhir, body)
    receiver.wait_for(1)
    assert decide(service, "req-ok").outcome == Outcome.AUTHORIZED
    denied = decide(service, "req-denied", pharmacy_npi=UNCERTIFIED)
    assert denied.outcome == Outcome.DENIED

    event = receiver.wait_for(2)[1]
    assert event.headers["Authorization"] == "Bearer hook-secret"
    status = status_of(event.bundle)
    assert status["notification-event"]["event-number"] == "1"  # only matching events count
    focus = event.bundle["entry"][1]
    assert focus["resource"]["id"] == denied.decision_id
    assert focus["resource"]["status"] == "failure"
    assert focus["request"] == {"method": "POST", "url": "GuidanceResponse"}
    assert [n["kind"] for n in queued(service)] == ["handshake", "event-notification"]
    assert read_status(fhir, subscription_id) == "active"


def test_a_failing_endpoint_is_tried_again_until_it_takes_the_notification(
    fhir: httpx.Client, service: RemsService, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    subscription_id = subscribe(fhir, subscription(receiver.url))
    receiver.wait_for(1)
    active(fhir, subscription_id)
    (handshake,) = queued(service)
    assert handshake["status"] == "delivered" and handshake["attempts"] == 3
    assert [r.status for r in receiver.received] == [500, 503, 200]
    assert len({r.bundle["id"] for r in receiver.received}) == 1  # a retry is the same Bundle


def test_after_the_last_attempt_it_is_dead_and_the_subscription_in_error_until_one_arrives(
    fhir: httpx.Client, service: RemsService, receiver: Receiver
) -> None:
    receiver.answers = [500] * POLICY.attempts
    subscription_id = subscribe(fhir, subscription(receiver.url))
    eventually(lambda: read_status(fhir, subscription_id) == "error", "in error")
    (handshake,) = queued(service)
    assert handshake["status"] == "dead" and handshake["attempts"] == POLICY.attempts
    assert handshake["last_error"] == "HTTP 500"
    assert "not delivered: HTTP 500" in fhir.get(f"/Subscription/{subscription_id}").json()["error"]

    decide(service, "req-after")  # the endpoint answers again: the next one goes through
    event = receiver.wait_for(1)[0]
    assert status_of(event.bundle)["type"] == "event-notification"
    active(fhir, subscription_id)


def test_a_hanging_endpoint_holds_up_no_decision(
    fhir: httpx.Client, service: RemsService, receiver: Receiver
) -> None:
    receiver.held.clear()
    subscribe(fhir, subscription(receiver.url))
    decisions = [decide(service, f"req-{n}") for n in range(20)]
    assert all(d.decision_id for d in decisions)  # every one answered while the endpoint hangs
    assert len(queued(service)) == 21
    receiver.held.set()
    events = receiver.wait_for(21)[1:]
    numbers = [status_of(r.bundle)["notification-event"]["event-number"] for r in events]
    assert numbers == [str(n) for n in range(1, 21)]  # one subscription's: in event order
    focus = [status_of(r.bundle)["notification-event"]["focus"]["reference"] for r in events]
    assert focus == [f"GuidanceResponse/{d.decision_id}" for d in decisions]


def test_off_stops_delivery_and_a_new_endpoint_shakes_hands_again(
    fhir: httpx.Client, service: RemsService, receiver: Receiver
) -> None:
    subscription_id = subscribe(fhir, subscription(receiver.url))
    active(fhir, subscription_id)
    off = subscription(receiver.url, id=subscription_id, status="off")
    updated = fhir.put(f"/Subscription/{subscription_id}", json=off)
    assert updated.status_code == 200 and updated.json()["status"] == "off"
    assert fhir.put(f"/Subscription/{subscription_id}", json=off).headers["etag"] == 'W/"3"'
    decide(service, "req-while-off")
    assert len(queued(service)) == 1  # the handshake only
    again = subscription(receiver.url + "/v2", id=subscription_id)
    assert fhir.put(f"/Subscription/{subscription_id}", json=again).json()["status"] == "requested"
    handshakes = receiver.wait_for(2)
    assert status_of(handshakes[1].bundle)["type"] == "handshake"
    active(fhir, subscription_id)


BAD = {
    "another topic": (
        subscription("http://127.0.0.1:9/hook", topic="urn:other:topic"),
        "Subscription.criteria",
    ),
    "a websocket": (
        subscription("http://127.0.0.1:9/hook")
        | {"channel": {"type": "websocket", "endpoint": "http://127.0.0.1:9/hook"}},
        "Subscription.channel.type",
    ),
    "an ftp endpoint": (subscription("ftp://127.0.0.1/hook"), "Subscription.channel.endpoint"),
    "no endpoint": (
        subscription("") | {"channel": {"type": "rest-hook"}},
        "Subscription.channel.endpoint",
    ),
    "another payload content": (
        subscription("http://127.0.0.1:9/hook", payload="everything"),
        f"Subscription.channel.payload.extension('{PAYLOAD_CONTENT}')",
    ),
    "an XML payload": (
        subscription("http://127.0.0.1:9/hook")
        | {"channel": {"type": "rest-hook", "endpoint": "http://x.test", "payload": "text/xml"}},
        "Subscription.channel.payload",
    ),
    "a filter of another parameter": (
        subscription("http://127.0.0.1:9/hook", filters=("GuidanceResponse?code=x",)),
        f"Subscription.criteria.extension('{FILTER_CRITERIA}')",
    ),
    "a filter of another resource type": (
        subscription("http://127.0.0.1:9/hook", filters=("Task?patient=P1",)),
        f"Subscription.criteria.extension('{FILTER_CRITERIA}')",
    ),
    "an unknown outcome": (
        subscription("http://127.0.0.1:9/hook", filters=("GuidanceResponse?outcome=maybe",)),
        f"Subscription.criteria.extension('{FILTER_CRITERIA}')",
    ),
    "a task filter without a value": (
        subscription("http://127.0.0.1:9/hook", topic=TASK_TOPIC, filters=("Task?owner=",)),
        f"Subscription.criteria.extension('{FILTER_CRITERIA}')",
    ),
    "a header without a name": (
        subscription("http://127.0.0.1:9/hook")
        | {"channel": {"type": "rest-hook", "endpoint": "http://x.test", "header": ["no"]}},
        "Subscription.channel.header",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
@sqlite_only  # refused or answered before the store (conftest)
def test_a_subscription_that_cannot_be_delivered_is_422_naming_the_element(
    fhir: httpx.Client, case: str
) -> None:
    body, element = BAD[case]
    refused = fhir.post("/Subscription", json=body)
    assert refused.status_code == 422, refused.text
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(element in issue.get("expression", []) for issue in outcome["issue"]), outcome


@sqlite_only  # refused or answered before the store (conftest)
def test_a_subscription_the_r4_model_refuses_is_422_too(fhir: httpx.Client) -> None:
    refused = fhir.post("/Subscription", json={"resourceType": "Subscription", "status": "on"})
    assert refused.status_code == 422
    assert refused.json()["resourceType"] == "OperationOutcome"


# --- Task events, published by the units that change Tasks ------------------------------------


def subscribed(service: RemsService, body: dict[str, Any]) -> str:
    read = read_subscription(body)
    assert read.spec is not None, read.problems
    draft = ResourceDraft(
        "Subscription", body, content_hash(body), ResourceIndex(), resource_id=body.get("id")
    )
    at = datetime(2022, 3, 2, tzinfo=UTC)
    done = run(service.record_subscription(SubscriptionSubmission(draft, read.spec), SOURCE, at))
    return done.resource.id


def task_event(task_id: str, patient: str, owner: str, code: str, status: str) -> Any:
    attributes = {"patient": patient, "owner": owner, "code": code, "status": status}
    resource = {"resourceType": "Task", "id": task_id, "status": status, "intent": "order"}
    return notifications.Event(notifications.TASK_TOPIC, f"Task/{task_id}", resource, attributes)


def test_task_events_are_queued_for_the_subscriptions_whose_filters_they_match(
    service: RemsService,
) -> None:
    hook = "http://127.0.0.1:9/hook"
    owner_code = subscribed(
        service, subscription(hook, TASK_TOPIC, ("Task?owner=1234567893&code=psf-due",))
    )
    patient_open = subscribed(
        service, subscription(hook, TASK_TOPIC, ("Task?patient=P1", "Task?status=requested"))
    )
    every_task = subscribed(service, subscription(hook + "/all", TASK_TOPIC))
    decisions = subscribed(service, subscription(hook + "/decisions"))
    events = [
        task_event("t1", "Patient/P1", "Practitioner/1234567893", "psf-due", "requested"),
        task_event("t2", "Patient/P2", "Practitioner/1245319599", "anc-overdue", "requested"),
        task_event(
            "t1",
            "Patient/P1",
            "Practitioner/1234567893",
            "urn:rems-gateway:task|psf-due",
            "completed",
        ),
    ]
    for event in events:
        service.writer.call(lambda store, e=event: notifications.publish(service.ctx, store, e))
    got: dict[str, list[tuple[int, str | None]]] = {}
    for row in queued(service):
        if row["kind"] == "event-notification":
            got.setdefault(row["subscription_id"], []).append((row["event_number"], row["focus"]))
    assert got == {
        owner_code: [(1, "Task/t1"), (2, "Task/t1")],
        patient_open: [(1, "Task/t1")],
        every_task: [(1, "Task/t1"), (2, "Task/t2"), (3, "Task/t1")],
    }
    assert decisions not in got
    assert all(row["next_attempt"] is not None for row in queued(service))


def test_an_off_subscription_hears_nothing_and_a_new_one_is_heard_at_once(
    service: RemsService,
) -> None:
    event = task_event("t1", "Patient/P1", "Practitioner/1234567893", "psf-due", "requested")

    def publish(store: Store) -> None:
        notifications.publish(service.ctx, store, event)

    service.writer.call(publish)  # nobody listens yet: the (cached) answer is "nobody"
    hook = "http://127.0.0.1:9/hook"
    first = subscribed(service, subscription(hook, TASK_TOPIC))
    service.writer.call(publish)
    subscribed(service, subscription(hook, TASK_TOPIC, id=first, status="off"))
    service.writer.call(publish)
    rows = [r for r in queued(service) if r["kind"] == "event-notification"]
    assert [(r["subscription_id"], r["event_number"]) for r in rows] == [(first, 1)]


# --- a real `rems-gateway serve`, killed with notifications pending -----------------------------


def outbound(db: Path) -> list[dict[str, Any]]:
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(tables.NotificationRow.__table__)).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_notifications_pending_when_serve_is_killed_are_delivered_once_after_a_restart(
    tmp_path: Path,
) -> None:
    env = {
        "REMS_NOTIFY_BACKOFF_SECONDS": "0.05",
        "REMS_NOTIFY_BACKOFF_MAX_SECONDS": "0.2",
        "REMS_NOTIFY_ATTEMPTS": "100",
    }
    flags = ("--auth", "development", "--clock", "message", "--timezone", "UTC")
    hook_port = free_port()  # nobody listens there yet: every attempt is refused
    order = json.loads((FIXTURES / "medicationrequest-outpatient.json").read_text())
    order["subject"]["identifier"]["value"] = SERVE_MRN
    sent = {"Content-Type": FHIR, "X-Clinical-Time": "2021-11-22T10:00:00Z"}
    first = start(tmp_path, *flags, **env)
    try:
        assert first.http.post("/admin/registry", json=serve_registry()).status_code == 200
        hook = f"http://127.0.0.1:{hook_port}/hook"
        created = first.http.post("/fhir/Subscription", json=subscription(hook), headers=sent)
        assert created.status_code == 201, created.text
        decided = first.http.post("/fhir/MedicationRequest", json=order, headers=sent)
        assert decided.status_code == 201, decided.text
        eventually(lambda: any(n["attempts"] > 0 for n in outbound(tmp_path / "rems.db")), "tried")
    finally:
        first.process.kill()  # kill -9: nothing is shut down
        first.process.wait()
    assert all(PHI_VALUE not in first.output() for PHI_VALUE in PHI)
    pending = outbound(tmp_path / "rems.db")
    assert [(n["kind"], n["status"]) for n in pending] == [
        ("handshake", "pending"),
        ("event-notification", "pending"),
    ]
    assert pending[0]["last_error"] == "ConnectError"

    receiver = Receiver(hook_port)
    second = start(tmp_path, *flags, **env)
    try:
        handshake, event = receiver.wait_for(2)
        done = lambda: all(n["status"] == "delivered" for n in outbound(tmp_path / "rems.db"))  # noqa: E731
        eventually(done, "delivered")
        assert len(receiver.received) == 2  # each once
        assert status_of(handshake.bundle)["type"] == "handshake"
        assert status_of(event.bundle)["notification-event"]["event-number"] == "1"
        metrics = second.http.get("/metrics").text
        assert 'rems_notifications_total{outcome="delivered"} 2.0' in metrics
        assert "rems_notifications_pending 0.0" in metrics
    finally:
        second.terminate()
        receiver.close()
    assert all(PHI_VALUE not in second.output() for PHI_VALUE in PHI)


@sqlite_only  # refused or answered before the store (conftest)
def test_a_subscription_is_taken_only_on_its_own_endpoint(fhir: httpx.Client) -> None:
    entry = {
        "resource": subscription("http://127.0.0.1:9/hook"),
        "request": {"method": "POST", "url": "Subscription"},
    }
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    refused = fhir.post("", json=bundle)
    assert refused.status_code == 400, refused.text
    assert refused.json()["issue"][0]["code"] == "not-supported"
    assert fhir.get("/Subscription", params={"status": "on"}).status_code == 400
    assert fhir.get("/Subscription/nobody/$status").status_code == 404


def test_the_backoff_doubles_up_to_its_cap_then_the_notification_is_dead() -> None:
    policy = DeliveryPolicy(attempts=5, first_backoff=1.0, max_backoff=3.0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    waits = [policy.retry_at(n, now) for n in range(1, 6)]
    seconds = [(w - now).total_seconds() for w in waits if w is not None]
    assert [round(s) for s in seconds] == [1, 2, 3, 3]  # jitter: at most 10 % more
    assert all(s <= limit * 1.1 for s, limit in zip(seconds, [1, 2, 3, 3], strict=True))
    assert waits[-1] is None


def test_a_subscription_made_by_another_process_is_heard_by_this_writer(
    service: RemsService, db_url: str
) -> None:
    event = task_event("t1", "Patient/P1", "Practitioner/1234567893", "psf-due", "requested")

    def publish(store: Store) -> None:
        notifications.publish(service.ctx, store, event)

    service.writer.call(publish)  # this writer now keeps "nobody listens"
    other_engine = make_engine(db_url)
    other = assemble(other_engine, service.ctx)
    try:
        made = subscribed(other.service, subscription("http://127.0.0.1:9/hook", TASK_TOPIC))
    finally:
        other.writer.stop()
        other_engine.dispose()
    service.writer.call(publish)
    rows = [r for r in queued(service) if r["kind"] == "event-notification"]
    assert [(r["subscription_id"], r["event_number"]) for r in rows] == [(made, 1)]
