"""The deliverer of notifications (docs/contracts.md §7): a companion of `serve` that sends the
durable outbound queue's notifications to their rest-hook endpoints.

It reads due notifications on its own read connections (never the writer's), sends each
subscription's notifications one at a time in the order they were queued (several subscriptions
at once), and records each outcome through the service as a tiny unit of work: 2xx is delivered;
anything else, a timeout or a refused connection is tried again after an exponential backoff
with jitter, and after the last attempt dead-lettered. A slow or failing endpoint holds up only
its own subscription — never ingestion or decisions. It wakes when the writer commits a queued
notification, else polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from mappings.fhir.subscription import Notice, SubscriptionState, notification_bundle
from rems_core.store.subscription_repo import DueNotification

log = logging.getLogger("rems_gateway.notify")
# What the outcome observer hears: each delivery, each failed attempt, each dead-lettering.
DELIVERED, FAILED, DEAD = "delivered", "failed", "dead"


@dataclass(frozen=True)
class DeliveryPolicy:
    attempts: int = 8  # then dead-lettered
    first_backoff: float = 1.0  # seconds before the second attempt; doubled each time
    max_backoff: float = 300.0
    timeout: float = 10.0  # per request
    poll: float = 1.0  # how often the queue is read when nothing wakes the deliverer
    batch: int = 32  # subscriptions started per read of the queue

    def retry_at(self, attempts_made: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts_made`` failed attempts (None: dead-letter)."""
        if attempts_made >= self.attempts:
            return None
        delay = min(self.max_backoff, self.first_backoff * 2 ** (attempts_made - 1))
        return now + timedelta(seconds=delay * random.uniform(1.0, 1.1))


def _now() -> datetime:
    return datetime.now(UTC)


class Deliverer:
    """Sends the queue's notifications while the HTTP app serves."""

    def __init__(
        self,
        service: RemsService,
        reads: RemsReads,
        policy: DeliveryPolicy,
        base_url: str,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self.reads = reads
        self.policy = policy
        self.base_url = base_url.rstrip("/")  # the FHIR base that focus fullUrls start with
        self.on_outcome = on_outcome
        self._sending: dict[str, asyncio.Task[None]] = {}  # by subscription
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False)
        self.service.writer.on_notified.append(self.wake)
        self._task = asyncio.create_task(self._run(), name="rems-notify")

    def wake(self) -> None:
        """From any thread (the writer's, after a commit that queued notifications)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop reading and sending; what was not recorded as delivered is sent again later."""
        with contextlib.suppress(ValueError):
            self.service.writer.on_notified.remove(self.wake)
        tasks = [t for t in (self._task, *self._sending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task, self._loop = None, None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._start_due()
            except Exception as exc:  # the store may be away for a while: read again later
                log.warning("notification queue not read: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.policy.poll)

    async def _start_due(self) -> None:
        busy = frozenset(self._sending)
        due = await self.reads.due_notifications(_now(), self.policy.batch, busy)
        for notification in due:
            if notification.subscription_id not in self._sending:
                task = asyncio.create_task(self._deliver(notification))
                self._sending[notification.subscription_id] = task

    async def _deliver(self, notification: DueNotification) -> None:
        try:
            error = await self._send(notification)
            await self._record(notification, error)
        except Exception as exc:  # e.g. the writer stopped: the notification stays pending
            log.warning("notification outcome not recorded: %s", type(exc).__name__)
        finally:
            self._sending.pop(notification.subscription_id, None)
            self._wake.set()  # the subscription's next notification may go now

    async def _send(self, notification: DueNotification) -> str | None:
        """POST the notification Bundle; None when the endpoint took it, else how it failed
        (a status or an exception's type: never the endpoint, headers or content)."""
        assert self._client is not None
        body = json.dumps(self._bundle(notification), separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": notification.content_type} | _headers(notification.headers)
        try:
            response = await self._client.post(notification.endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    def _bundle(self, notification: DueNotification) -> dict[str, Any]:
        state = SubscriptionState(  # the events as of this one: a retry sends the same count
            notification.subscription_id,
            notification.topic,
            notification.status,
            notification.event_number,
        )
        notice = Notice(
            notification.kind,
            notification.event_number,
            str(notification.body.get("timestamp", "")),
            notification.focus,
            notification.body.get("resource"),
        )
        now = _now().isoformat()
        return notification_bundle(state, notice, notification.payload, self.base_url, now)

    async def _record(self, notification: DueNotification, error: str | None) -> None:
        now = _now()
        if error is None:
            await self.service.notification_delivered(notification.notification_id, now)
            self._observe(DELIVERED)
            return
        retry_at = self.policy.retry_at(notification.attempts + 1, now)
        await self.service.notification_failed(notification.notification_id, error, retry_at)
        if retry_at is not None and self._loop is not None:  # read the queue again by then
            self._loop.call_later((retry_at - now).total_seconds(), self._wake.set)
        self._observe(FAILED)
        if retry_at is None:
            self._observe(DEAD)
        log.info(
            "notification not delivered",
            extra={
                "subscription": notification.subscription_id,
                "event_number": notification.event_number,
                "attempts": notification.attempts + 1,
                "error": error,
                "dead": retry_at is None,
            },
        )

    def _observe(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)


def _headers(lines: tuple[str, ...]) -> dict[str, str]:
    """channel.header's `Name: value` lines as request headers."""
    pairs = (line.partition(":") for line in lines)
    return {name.strip(): value.strip() for name, _, value in pairs}
