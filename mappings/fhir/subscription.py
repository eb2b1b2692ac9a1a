"""FHIR Subscriptions as the Subscriptions R5 Backport IG profiles them for R4 (docs/contracts.md
§7): a Subscription read into what delivery needs, filter matching, and the notification Bundles
(type `history`, led by a Parameters SubscriptionStatus) and the `$status` answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mappings.fhir.outcome import Issue
from rems_core.model import Outcome

TASK_TOPIC = "urn:rems-gateway:topic:task"
DECISION_TOPIC = "urn:rems-gateway:topic:decision"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_CRITERIA = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
PAYLOADS = ("empty", "id-only", "full-resource")
DEFAULT_PAYLOAD = "id-only"
CONTENT_TYPES = ("application/fhir+json", "application/json")
HANDSHAKE, EVENT = "handshake", "event-notification"
OFF, REQUESTED, ACTIVE, ERROR = "off", "requested", "active", "error"
# topic → (the focus's resource type, its filter parameters); a decision is a GuidanceResponse
TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    TASK_TOPIC: ("Task", ("patient", "owner", "code", "status")),
    DECISION_TOPIC: ("GuidanceResponse", ("patient", "outcome")),
}
# filter parameters that are references: a bare id is read as one of this type
REFERENCES = {"patient": "Patient", "owner": "Practitioner"}
OUTCOMES = frozenset(o.value for o in Outcome)
CRITERIA = "Subscription.criteria"
FILTER = f"{CRITERIA}.extension('{FILTER_CRITERIA}')"
Filter = tuple[str, str]  # (search parameter, value)


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a Subscription asks for, as delivery needs it."""

    topic: str
    filters: tuple[Filter, ...]
    endpoint: str
    headers: tuple[str, ...]
    payload: str  # empty | id-only | full-resource
    content_type: str
    off: bool  # the client's status is `off`: nothing is delivered


@dataclass
class SubscriptionRead:
    spec: SubscriptionSpec | None = None
    problems: list[Issue] = field(default_factory=list)


def _problem(text: str, where: str, code: str = "value") -> Issue:
    return Issue("error", code, text, (where,))


def _extensions(element: Any, url: str) -> list[Any]:
    found = element.get("extension", []) if isinstance(element, dict) else []
    return [e for e in found if isinstance(e, dict) and e.get("url") == url]


def read_subscription(data: dict[str, Any]) -> SubscriptionRead:
    """``data`` is a Subscription the R4B model took; every problem names its element."""
    read = SubscriptionRead()
    topic = data.get("criteria")
    if topic not in TOPICS:
        known = " or ".join(TOPICS)
        read.problems.append(_problem(f"criteria must be a topic: {known}", CRITERIA))
        return read
    filters = _filters(data.get("_criteria"), topic, read.problems)
    channel = data.get("channel", {})
    endpoint = _endpoint(channel, read.problems)
    headers = _headers(channel.get("header", []), read.problems)
    content_type, payload = _payload(channel, read.problems)
    if read.problems:
        return read
    read.spec = SubscriptionSpec(
        topic, filters, endpoint, headers, payload, content_type, data.get("status") == OFF
    )
    return read


def _filters(criteria: Any, topic: str, problems: list[Issue]) -> tuple[Filter, ...]:
    resource_type, allowed = TOPICS[topic]
    filters: list[Filter] = []
    for extension in _extensions(criteria, FILTER_CRITERIA):
        text = extension.get("valueString")
        kind, mark, query = str(text).partition("?")
        if not isinstance(text, str) or kind != resource_type or not mark or not query:
            problems.append(_problem(f"a filter is `{resource_type}?parameter=value&…`", FILTER))
            continue
        for name, value in parse_qsl(query, keep_blank_values=True):
            problem = _filter_problem(name, value, allowed)
            if problem is not None:
                problems.append(_problem(problem, FILTER))
            else:
                filters.append((name, _reference(name, value)))
    return tuple(filters)


def _filter_problem(name: str, value: str, allowed: tuple[str, ...]) -> str | None:
    if name not in allowed:
        return f"filter parameter {name!r} is not supported here; use {', '.join(allowed)}"
    if not value:
        return f"filter parameter {name!r} needs a value"
    if name == "outcome" and value not in OUTCOMES:
        return f"outcome is one of {', '.join(sorted(OUTCOMES))}"
    return None


def _reference(name: str, value: str) -> str:
    resource_type = REFERENCES.get(name)
    return f"{resource_type}/{value}" if resource_type and "/" not in value else value


def _endpoint(channel: dict[str, Any], problems: list[Issue]) -> str:
    if channel.get("type") != "rest-hook":
        text = "only rest-hook channels are supported"
        problems.append(_problem(text, "Subscription.channel.type"))
    endpoint = channel.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        where = "Subscription.channel.endpoint"
        problems.append(_problem("the endpoint must be an http(s) URL", where, "required"))
        return ""
    return str(endpoint)


def _headers(headers: list[Any], problems: list[Issue]) -> tuple[str, ...]:
    for header in headers:
        name, colon, _ = str(header).partition(":")
        if not colon or not name.strip() or " " in name.strip():
            problems.append(_problem("a header is `Name: value`", "Subscription.channel.header"))
    return tuple(str(h) for h in headers)


def _payload(channel: dict[str, Any], problems: list[Issue]) -> tuple[str, str]:
    content_type = channel.get("payload") or CONTENT_TYPES[0]
    if content_type not in CONTENT_TYPES:
        where = "Subscription.channel.payload"
        problems.append(_problem(f"the payload is {' or '.join(CONTENT_TYPES)}", where))
    given = _extensions(channel.get("_payload"), PAYLOAD_CONTENT)
    payload = given[0].get("valueCode") if given else DEFAULT_PAYLOAD
    if payload not in PAYLOADS:
        where = f"Subscription.channel.payload.extension('{PAYLOAD_CONTENT}')"
        problems.append(_problem(f"the payload content is one of {', '.join(PAYLOADS)}", where))
    return content_type, str(payload)


def with_status(body: dict[str, Any], status: str, error: str = "") -> dict[str, Any]:
    """The Subscription as stored: the server's status (and its error, while in error)."""
    shaped = {k: v for k, v in body.items() if k != "error"} | {"status": status}
    return shaped | {"error": error} if status == ERROR and error else shaped


# --- matching ----------------------------------------------------------------------------------


def _token_matches(wanted: str, value: str) -> bool:
    """`system|code` matches exactly; a bare code matches the code of any system."""
    return wanted == value if "|" in wanted else wanted == value.rpartition("|")[2]


def matches(filters: Iterable[Filter], attributes: Mapping[str, str]) -> bool:
    """Every filter holds for the event's attributes (no filter: every event matches)."""
    for name, wanted in filters:
        value = attributes.get(name)
        if value is None:
            return False
        if name in REFERENCES and value != wanted:
            return False
        if name not in REFERENCES and not _token_matches(wanted, value):
            return False
    return True


# --- notifications ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionState:
    """A Subscription as its status reports it."""

    subscription_id: str
    topic: str
    status: str
    events: int  # events since the subscription started


@dataclass(frozen=True)
class Notice:
    """One notification: a handshake, or an event with its focus."""

    kind: str  # handshake | event-notification
    event_number: int
    timestamp: str = ""  # when the event was recorded (ISO 8601)
    focus: str | None = None  # "GuidanceResponse/dec-…", "Task/…"
    resource: dict[str, Any] | None = None  # the focus as of the event (full-resource)


def status_parameters(state: SubscriptionState, kind: str, notice: Notice | None) -> dict[str, Any]:
    """The SubscriptionStatus (R4: a Parameters of the backport's profile)."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": _subscription(state)}},
        {"name": "topic", "valueCanonical": state.topic},
        {"name": "status", "valueCode": state.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(state.events)},
    ]
    if notice is not None and notice.kind == EVENT:
        parameters.append({"name": "notification-event", "part": _event_parts(notice)})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def _subscription(state: SubscriptionState) -> str:
    return f"Subscription/{state.subscription_id}"


def _event_parts(notice: Notice) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(notice.event_number)},
        {"name": "timestamp", "valueInstant": notice.timestamp},
    ]
    if notice.focus is not None:
        parts.append({"name": "focus", "valueReference": {"reference": notice.focus}})
    return parts


def notification_bundle(
    state: SubscriptionState, notice: Notice, payload: str, base_url: str, now: str
) -> dict[str, Any]:
    """The Bundle a rest-hook receives; its ids are the same on every attempt, so a receiver
    can tell a retry from a new notification."""
    key = f"{state.subscription_id}/{notice.kind}/{notice.event_number}"
    status_id = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:rems-gateway:status/{key}")
    entries = [
        {
            "fullUrl": f"urn:uuid:{status_id}",
            "resource": status_parameters(state, notice.kind, notice) | {"id": str(status_id)},
            "request": {"method": "GET", "url": f"{_subscription(state)}/$status"},
            "response": {"status": "200"},
        }
    ]
    if notice.focus is not None and payload != "empty":
        entries.append(_focus_entry(notice, payload, state.topic, base_url))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:rems-gateway:notification/{key}")),
        "type": "history",
        "timestamp": now,
        "entry": entries,
    }


def _focus_entry(notice: Notice, payload: str, topic: str, base_url: str) -> dict[str, Any]:
    assert notice.focus is not None
    resource_type = notice.focus.partition("/")[0]
    created = topic == DECISION_TOPIC  # a decision is a new GuidanceResponse; a Task changes
    entry: dict[str, Any] = {"fullUrl": f"{base_url}/{notice.focus}"}
    if payload == "full-resource" and notice.resource is not None:
        entry["resource"] = notice.resource
    entry["request"] = (
        {"method": "POST", "url": resource_type}
        if created
        else {"method": "PUT", "url": notice.focus}
    )
    entry["response"] = {"status": "201" if created else "200"}
    return entry


def _query_id(state: SubscriptionState) -> uuid.UUID:
    key = f"{state.subscription_id}/{state.status}/{state.events}"
    return uuid.uuid5(uuid.NAMESPACE_URL, f"urn:rems-gateway:query-status/{key}")


def status_bundle(state: SubscriptionState, self_url: str) -> dict[str, Any]:
    """`Subscription/{id}/$status`: a searchset of its SubscriptionStatus."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"urn:uuid:{_query_id(state)}",
                "resource": status_parameters(state, "query-status", None),
                "search": {"mode": "match"},
            }
        ],
    }
