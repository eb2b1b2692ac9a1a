"""Notifications (docs/contracts.md §7): a change that subscribers may hear of is published inside
the unit of work that makes it, and queued for every matching subscription in that same unit — so
a notification is durable exactly when the change is, and delivery (``gateway/notify.py``) never
holds up the writer. Delivery's outcomes come back as units of their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.app.context import UnitContext
from mappings.fhir.subscription import (
    ACTIVE,
    DECISION_TOPIC,
    ERROR,
    EVENT,
    HANDSHAKE,
    OFF,
    TASK_TOPIC,
    matches,
    with_status,
)
from rems_core.store.fhir_repo import ResourceIndex
from rems_core.store.repo import Store
from rems_core.store.subscription_repo import DEAD, DELIVERED, PENDING, Listener

__all__ = [  # the topics are the mapping's; units publishing on them import them from here
    "DECISION_TOPIC",
    "TASK_TOPIC",
    "Event",
    "delivered",
    "failed",
    "listened",
    "publish",
    "queue_handshake",
]
SUBSCRIPTION = "Subscription"


@dataclass(frozen=True)
class Event:
    """One change on a topic: its focus (``"Task/…"``), the focus as of the change (for
    full-resource payloads) and the values a subscription's filters match (``patient``,
    ``owner``, ``code``, ``status``, …, as FHIR search values)."""

    topic: str
    focus: str
    resource: dict[str, Any]
    attributes: dict[str, str] = field(default_factory=dict)


def listened(store: Store, topic: str) -> bool:
    """Whether any subscription listens to ``topic`` (a publisher may skip building its event)."""
    return bool(store.listeners(topic))


def publish(ctx: UnitContext, store: Store, event: Event) -> None:
    """Queue ``event`` for every subscription to its topic whose filters it matches (every
    status but `off`: a subscription still shaking hands, or in error, gets its events in order
    once its endpoint answers), each with the subscription's next event number."""
    for listener in store.listeners(event.topic):
        if matches(listener.filters, event.attributes):
            _queue_event(ctx, store, listener, event)


def _queue_event(ctx: UnitContext, store: Store, listener: Listener, event: Event) -> None:
    now = ctx.now()
    body: dict[str, Any] = {"timestamp": now.isoformat()}
    if listener.payload == "full-resource":
        body["resource"] = event.resource
    number = store.count_event(listener.subscription_id)
    store.queue_notification(
        _notification(listener.subscription_id, number, EVENT, now, event.focus, body)
    )


def queue_handshake(store: Store, subscription_id: str, events: int, at: datetime) -> None:
    store.queue_notification(_notification(subscription_id, events, HANDSHAKE, at, None, {}))


def _notification(
    subscription_id: str,
    number: int,
    kind: str,
    at: datetime,
    focus: str | None,
    body: dict[str, Any],
) -> dict[str, Any]:
    return {
        "subscription_id": subscription_id,
        "event_number": number,
        "kind": kind,
        "focus": focus,
        "body": body,
        "status": PENDING,
        "attempts": 0,
        "created": at,
        "next_attempt": at,
        "delivered": None,
        "last_error": "",
    }


# --- delivery's outcomes ---------------------------------------------------------------------


def delivered(ctx: UnitContext, store: Store, notification_id: int, at: datetime) -> None:
    """The endpoint took it (2xx): the subscription is active (again)."""
    found = store.notification(notification_id)
    if found is None or found["status"] != PENDING:
        return
    store.set_notification(
        notification_id,
        {"status": DELIVERED, "attempts": found["attempts"] + 1, "delivered": at, "last_error": ""},
    )
    _set_status(ctx, store, found["subscription_id"], ACTIVE, "")


def failed(
    ctx: UnitContext,
    store: Store,
    notification_id: int,
    error: str,
    retry_at: datetime | None,
) -> None:
    """An attempt failed (``error`` names how, never what was sent): tried again at
    ``retry_at``, or dead-lettered (None) — and then the subscription is in error."""
    found = store.notification(notification_id)
    if found is None or found["status"] != PENDING:
        return
    attempt = {"attempts": found["attempts"] + 1, "last_error": error}
    if retry_at is not None:
        store.set_notification(notification_id, attempt | {"next_attempt": retry_at})
        return
    store.set_notification(notification_id, attempt | {"status": DEAD})
    why = f"a {found['kind']} was not delivered: {error}"
    _set_status(ctx, store, found["subscription_id"], ERROR, why)


def _set_status(
    ctx: UnitContext, store: Store, subscription_id: str, status: str, error: str
) -> None:
    """The server's status of the subscription, in its table and as a new version of the
    Subscription; `off` (the client's) stays off."""
    row = store.subscription(subscription_id)
    if row is None or row["status"] in (OFF, status):
        return
    store.set_subscription(subscription_id, {"status": status, "error": error})
    current = store.current_resource(SUBSCRIPTION, subscription_id)
    if current is None:
        return
    body = with_status(current.body, status, error)
    store.put_resource(
        SUBSCRIPTION, current.id, body, current.content_hash, ResourceIndex(), ctx.now(), current
    )
