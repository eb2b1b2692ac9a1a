"""Notifications (docs/contracts.md §7): a change that subscribers may hear of is published inside
the unit of work that makes it, and queued for every matching subscription in that same unit — so
a notification is durable exactly when the change is, and delivery (``gateway/notify``) never
holds up the writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.app.context import UnitContext
from rems_core.store.repo import Store

TASK_TOPIC = "urn:rems-gateway:topic:task"
DECISION_TOPIC = "urn:rems-gateway:topic:decision"


@dataclass(frozen=True)
class Event:
    """One change on a topic: its focus (``"Task/…"``), the focus as of the change (for
    full-resource payloads) and the values a subscription's filters match (``patient``,
    ``owner``, ``code``, ``status``, …, as FHIR search values)."""

    topic: str
    focus: str
    resource: dict[str, Any]
    attributes: dict[str, str] = field(default_factory=dict)


def publish(ctx: UnitContext, store: Store, event: Event) -> None:
    """Queue ``event`` for every active subscription to its topic whose filters it matches."""
