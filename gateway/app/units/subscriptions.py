"""FHIR Subscriptions (docs/contracts.md §7) inside the service's units of work: each version is
stored as a resource, what delivery needs in the subscription table, and a subscription that
asks to be (re)started gets a handshake queued ahead of its events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.app.context import UnitContext
from gateway.app.units import fhir_records, notifications
from gateway.app.values import Recorded, Source, SubscriptionSubmission
from mappings.fhir.subscription import ERROR, OFF, REQUESTED, SubscriptionSpec, with_status
from rems_core.store.repo import Store


def record_subscription(
    ctx: UnitContext,
    store: Store,
    submission: SubscriptionSubmission,
    source: Source,
    received: datetime,
) -> Recorded:
    """A new Subscription (`requested`, handshake queued), or its next version: `off` stops
    delivery, a changed channel or criteria (or one that was off or in error) shakes hands
    again, anything else keeps the status it has. The same content again changes nothing."""
    draft, spec = submission.draft, submission.spec
    current = fhir_records.check(store, draft, source.actor)
    row = store.subscription(current.id) if current is not None else None
    status = _next_status(spec, row)
    same = current is not None and current.content_hash == draft.content_hash
    if current is not None and same and row is not None and row["status"] == status:
        return Recorded(current, created=False, unchanged=True)
    body = with_status(draft.body, status)
    stored = fhir_records.new_version(ctx, store, draft, body, received, current, source.actor)
    resource_id = stored.id
    store.save_subscription(_columns(resource_id, spec, status, row, source, received))
    if status == REQUESTED and (row is None or _restarts(spec, row)):
        events = row["events"] if row is not None else 0
        notifications.queue_handshake(store, resource_id, events, ctx.now())
    return Recorded(stored, created=current is None)


def _restarts(spec: SubscriptionSpec, row: dict[str, Any]) -> bool:
    """Whether a new version asks for a new handshake."""
    changed = (
        row["topic"] != spec.topic
        or row["endpoint"] != spec.endpoint
        or _stored_filters(spec) != row["filters"]
    )
    return changed or row["status"] in (OFF, ERROR)


def _next_status(spec: SubscriptionSpec, row: dict[str, Any] | None) -> str:
    if spec.off:
        return OFF
    if row is None or _restarts(spec, row):
        return REQUESTED
    return str(row["status"])


def _stored_filters(spec: SubscriptionSpec) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in spec.filters]


def _columns(
    resource_id: str,
    spec: SubscriptionSpec,
    status: str,
    row: dict[str, Any] | None,
    source: Source,
    received: datetime,
) -> dict[str, Any]:
    return {
        "id": resource_id,
        "topic": spec.topic,
        "filters": _stored_filters(spec),
        "endpoint": spec.endpoint,
        "headers": list(spec.headers),
        "payload": spec.payload,
        "content_type": spec.content_type,
        "status": status,
        "events": row["events"] if row is not None else 0,
        "owner": row["owner"] if row is not None else source.actor,
        "created": row["created"] if row is not None else received,
        "error": "",
    }
