"""FHIR Subscriptions' delivery state and the durable outbound queue of their notifications.

Which subscriptions listen to a topic is read once per registry version and kept by the writer
between batches (as the registry's reads are): publishing an event then costs a dictionary
lookup when nobody listens. A subscription's change bumps that version, in every process.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert, PreparedQuery

subscription_t = t.SubscriptionRow.__table__
notification_t = t.NotificationRow.__table__
OFF = "off"  # a subscription in every other status (requested, active, error) listens
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass(frozen=True)
class Listener:
    """A subscription an event of its topic may be queued for."""

    subscription_id: str
    filters: tuple[tuple[str, str], ...]
    payload: str


@dataclass(frozen=True)
class DueNotification:
    """The oldest pending notification of one subscription, with what sending it needs."""

    notification_id: int
    subscription_id: str
    event_number: int
    kind: str
    focus: str | None
    body: dict[str, Any]
    attempts: int
    topic: str
    endpoint: str
    headers: tuple[str, ...]
    payload: str
    content_type: str
    status: str  # the subscription's


_listening = PreparedQuery(
    select(subscription_t.c.id, subscription_t.c.filters, subscription_t.c.payload).where(
        subscription_t.c.topic == bindparam("topic"),
        subscription_t.c.status != OFF,
    )
)
_count_event = PreparedQuery(
    update(subscription_t)
    .where(subscription_t.c.id == bindparam("of_id"))
    .values(events=subscription_t.c.events + 1)
    .returning(subscription_t.c.events)
)
_insert_notification = PreparedInsert(insert(notification_t))
_queue_head = notification_t.alias("earlier")
_due_columns = [  # named as DueNotification's fields
    notification_t.c.id.label("notification_id"),
    *(
        notification_t.c[name]
        for name in ("subscription_id", "event_number", "kind", "focus", "body", "attempts")
    ),
    *(
        subscription_t.c[name]
        for name in ("topic", "endpoint", "headers", "payload", "content_type", "status")
    ),
]


def _due(limit: int, busy: Collection[str]) -> Any:
    """Each subscription's oldest pending notification, once it is due: a subscription's
    notifications go in the order they were queued."""
    oldest = (
        select(func.min(_queue_head.c.id))
        .where(
            _queue_head.c.subscription_id == notification_t.c.subscription_id,
            _queue_head.c.status == PENDING,
        )
        .scalar_subquery()
    )
    query = (
        select(*_due_columns)
        .join(subscription_t, subscription_t.c.id == notification_t.c.subscription_id)
        .where(
            notification_t.c.status == PENDING,
            notification_t.c.next_attempt <= bindparam("now"),
            notification_t.c.id == oldest,
            subscription_t.c.status != OFF,
        )
        .order_by(notification_t.c.next_attempt, notification_t.c.id)
        .limit(limit)
    )
    return query.where(subscription_t.c.id.notin_(list(busy))) if busy else query


def _filters(stored: list[dict[str, str]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((f["name"], f["value"]) for f in stored or ())


def _due_notification(row: Any) -> DueNotification:
    values = dict(row._mapping)
    headers = tuple(values.pop("headers") or ())
    return DueNotification(**values | {"body": values["body"] or {}, "headers": headers})


class SubscriptionRepo:
    conn: Connection
    registry_changed: bool
    notified = False  # a notification was queued in this transaction: wake the deliverer
    _listeners: dict[str, tuple[Listener, ...]]

    def listeners(self, topic: str) -> tuple[Listener, ...]:
        """The subscriptions that events of ``topic`` are queued for."""
        found = self._listeners.get(topic)
        if found is None:
            rows = _listening.rows(self.conn, {"topic": topic})
            found = tuple(Listener(r.id, _filters(r.filters), r.payload) for r in rows)
            self._listeners[topic] = found
        return found

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            select(subscription_t).where(subscription_t.c.id == subscription_id)
        ).first()
        return dict(row._mapping) if row is not None else None

    def subscription_ids(self, status: str | None = None) -> list[str]:
        query = select(subscription_t.c.id).order_by(subscription_t.c.created, subscription_t.c.id)
        if status is not None:
            query = query.where(subscription_t.c.status == status)
        return list(self.conn.execute(query).scalars())

    def save_subscription(self, values: dict[str, Any]) -> None:
        """Insert or replace a subscription (``values`` has every column); the topics' listeners
        are read anew, here and in every writer."""
        found = self.subscription(values["id"])
        if found is None:
            self.conn.execute(insert(subscription_t).values(**values))
        else:
            self.set_subscription(values["id"], values)
        self.registry_changed = True
        self._listeners = {}

    def set_subscription(self, subscription_id: str, values: dict[str, Any]) -> None:
        """Delivery state (status, error) that changes no topic's listeners."""
        self.conn.execute(
            update(subscription_t).where(subscription_t.c.id == subscription_id).values(**values)
        )

    def count_event(self, subscription_id: str) -> int:
        """The subscription's next event number."""
        return int(_count_event.rows(self.conn, {"of_id": subscription_id})[0][0])

    def queue_notification(self, values: dict[str, Any]) -> None:
        _insert_notification.run(self.conn, [values])
        self.notified = True

    def notification(self, notification_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            select(notification_t).where(notification_t.c.id == notification_id)
        ).first()
        return dict(row._mapping) if row is not None else None

    def set_notification(self, notification_id: int, values: dict[str, Any]) -> None:
        self.conn.execute(
            update(notification_t).where(notification_t.c.id == notification_id).values(**values)
        )

    def due_notifications(
        self, now: datetime, limit: int, busy: Collection[str] = ()
    ) -> list[DueNotification]:
        """Up to ``limit`` subscriptions' next notifications due by ``now``, but for the
        subscriptions in ``busy`` (one of theirs is being sent)."""
        rows = self.conn.execute(_due(limit, busy), {"now": now})
        return [_due_notification(r) for r in rows]

    def notification_counts(self) -> dict[str, int]:
        """Notifications by status (pending, delivered, dead)."""
        rows = self.conn.execute(
            select(notification_t.c.status, func.count()).group_by(notification_t.c.status)
        )
        return {status: count for status, count in rows}
