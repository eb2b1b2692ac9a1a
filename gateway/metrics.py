"""Prometheus metrics of one app, in its own registry (two apps in one process never mix)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.app.reads import RemsReads
from gateway.app.values import REVIEW_KINDS
from gateway.app.writer import LOCK_BUCKETS, LockTimes, Writer
from gateway.mllp.intake import DISPOSITIONS, KNOWN_MESSAGE_TYPES, OTHER_TYPE, UNREADABLE
from gateway.notify import DEAD, DELIVERED, FAILED
from gateway.scheduler import RESULTS as SCHEDULER_RESULTS
from rems_core.model import Decision, Outcome
from rems_core.store.subscription_repo import PENDING

log = logging.getLogger("rems_gateway.http")
UNMATCHED = "unmatched"  # every unknown path shares one label, so scanners cannot grow the series
PROBES = {"/healthz", "/readyz", "/metrics"}  # polled every few seconds: debug, not info
REVIEW_STATUSES = ("open", "linked", "discarded", "purged")
NOTIFICATION_OUTCOMES = (DELIVERED, FAILED, DEAD)


class WriterCollector(Collector):
    """The writer's own counters, read at scrape time."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "rems_writer_commits", "Group commits of the single writer", value=self.writer.commits
        )
        yield CounterMetricFamily(
            "rems_writer_units", "Units of work committed by the writer", value=self.writer.units
        )
        times = self.writer.times
        yield CounterMetricFamily(
            "rems_writer_busy_seconds",
            "Wall time the writer spent applying and committing batches",
            value=times.busy,
        )
        yield CounterMetricFamily(
            "rems_writer_cpu_seconds",
            "CPU time of the writer's own thread in batches (the rest of the process's CPU is "
            "the edges')",
            value=times.cpu,
        )
        yield _lock_histogram(
            "rems_writer_chain_lock_wait_seconds",
            "Per batch: from asking for the audit chain head's row lock to holding it",
            times.lock_wait,
        )
        yield _lock_histogram(
            "rems_writer_chain_lock_hold_seconds",
            "Per batch: how long the audit chain head's row lock was held (until COMMIT or "
            "ROLLBACK returned); every gateway on the database queues on it",
            times.lock_hold,
        )


def _lock_histogram(name: str, documentation: str, times: LockTimes) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip((*LOCK_BUCKETS, float("inf")), times.counts, strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=times.total)


class GatewayMetrics:
    def __init__(self, writer: Writer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rems_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rems_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "rems_decisions", "Dispense decisions by outcome", ["outcome"], registry=self.registry
        )
        for outcome in Outcome:
            self.decisions.labels(outcome=outcome.value)
        self.acks = Counter(
            "rems_hl7_acks",
            "HL7 v2 ACKs sent, by our code (AA, AE, AR; before a sender's ack_codes)",
            ["code"],
            registry=self.registry,
        )
        self.hl7_messages = Counter(
            "rems_hl7_messages",
            "HL7 v2 messages by MSH-9 type and disposition",
            ["message_type", "disposition"],
            registry=self.registry,
        )
        for disposition in DISPOSITIONS:
            self.hl7_messages.labels(message_type="ORU^R01", disposition=disposition)
        self.ack_latency = Histogram(
            "rems_hl7_ack_seconds", "From a message's arrival to its ACK", registry=self.registry
        )
        self.review_items = Gauge(
            "rems_review_items",
            "Review queue items by kind and status (open: the queue; purged: past retention)",
            ["kind", "status"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "rems_notifications",
            "Subscription notifications: delivered, failed attempts, dead-lettered",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in NOTIFICATION_OUTCOMES:
            self.notifications.labels(outcome=outcome)
        self.notifications_pending = Gauge(
            "rems_notifications_pending",
            "Notifications in the outbound queue not yet delivered or dead-lettered",
            registry=self.registry,
        )
        self.scheduled_runs = Counter(
            "rems_scheduled_runs",
            "Scheduler ticks that ran the work, skipped it (another gateway holds the scheduler "
            "lease) or failed",
            ["result"],
            registry=self.registry,
        )
        for result in SCHEDULER_RESULTS:
            self.scheduled_runs.labels(result=result)
        self.scheduler_lease = Gauge(
            "rems_scheduler_lease_held",
            "1 while this process holds the scheduler lease (runs the cluster's scheduled work)",
            registry=self.registry,
        )
        self.cds_cards = Counter(
            "rems_cds_cards",
            "CDS Hooks cards answered, by service and indicator (info, warning, critical)",
            ["service", "indicator"],
            registry=self.registry,
        )
        self.cds_feedback = Counter(
            "rems_cds_feedback",
            "CDS Hooks feedback recorded, by outcome (accepted, overridden)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(WriterCollector(writer))

    async def refresh_review(self, reads: RemsReads) -> None:
        """The queue as the database has it now (read at scrape time; kept if it cannot be)."""
        try:
            counts = await reads.review_counts()
        except SQLAlchemyError as exc:
            log.warning("review queue not counted: %s", type(exc).__name__)
            return
        for kind in REVIEW_KINDS:
            for status in REVIEW_STATUSES:
                count = counts.get((kind, status), 0)
                self.review_items.labels(kind=kind, status=status).set(count)

    async def refresh_notifications(self, reads: RemsReads) -> None:
        """The outbound queue's length now (read at scrape time; kept if it cannot be)."""
        try:
            counts = await reads.notification_counts()
        except SQLAlchemyError as exc:
            log.warning("notifications not counted: %s", type(exc).__name__)
            return
        self.notifications_pending.set(counts.get(PENDING, 0))

    def count_cards(self, service: str, indicators: list[str]) -> None:
        for indicator in indicators:
            self.cds_cards.labels(service=service, indicator=indicator).inc()

    def count_feedback(self, outcome: str) -> None:
        self.cds_feedback.labels(outcome=outcome).inc()

    def count_notification(self, outcome: str) -> None:
        self.notifications.labels(outcome=outcome).inc()

    def watch_connections(self, open_connections: Callable[[], int]) -> None:
        gauge = Gauge("rems_mllp_open_connections", "Open MLLP connections", registry=self.registry)
        gauge.set_function(lambda: float(open_connections()))

    def count_ack(self, code: str, seconds: float) -> None:
        self.acks.labels(code=code).inc()
        self.ack_latency.observe(seconds)

    def count_hl7_message(self, message_type: str, disposition: str) -> None:
        if message_type not in KNOWN_MESSAGE_TYPES and message_type != UNREADABLE:
            message_type = OTHER_TYPE  # bounded labels, whatever a caller passes
        if disposition not in DISPOSITIONS:
            disposition = "error"
        self.hl7_messages.labels(message_type=message_type, disposition=disposition).inc()

    def scheduler_tick(self, result: str | None, holds: bool) -> None:
        if result is not None:
            self.scheduled_runs.labels(result=result).inc()
        self.scheduler_lease.set(1 if holds else 0)

    def count_decision(self, decision: Decision) -> None:
        self.decisions.labels(outcome=decision.outcome.value).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


def route_template(scope: Scope) -> str:
    """`/fhir/Patient/{id}`, never the concrete path: paths and queries may carry identifiers."""
    route = scope.get("route")
    return getattr(route, "path", UNMATCHED)


class RequestMetricsMiddleware:
    """Counts and times every HTTP request, and writes the one access-log line without PHI."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe(route, scope["method"], status, elapsed)
            log.log(
                logging.DEBUG if route in PROBES else logging.INFO,
                "%s %s %d",
                scope["method"],
                route,
                status,
                extra={"duration_ms": round(elapsed * 1000, 1)},
            )
