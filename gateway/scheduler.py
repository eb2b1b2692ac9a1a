"""The periodic side of §8: scheduled work up to "now", once per cluster, inside `serve`.

Several gateways may share one database; only the holder of the scheduler lease (a row of
``scheduler_lease``) runs the work. APScheduler 3 ticks on the event loop every third of the
lease's time to live (or every interval, if that is shorter). On each tick the holder renews its
lease, and runs the work when the interval has passed since its last run (or its last failure);
a gateway that does not hold the lease tries to take it, and runs the work at once when it does
(at start-up, or when the holder died and its lease ran out): the work computes from the files
up to "now", so that first run catches up with everything that fell due meanwhile. Each unit
of the work checks the lease first (``RemsService.run_scheduled_as``). A clean shutdown releases
the lease.

With ``--clock message`` there is no "now" to run up to: scheduled work then runs only when asked
(``POST /admin/scheduled-work``, the scenario runner's ``advance_to``), lease or not.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.app.service import RemsService

log = logging.getLogger("rems_gateway.scheduler")

RAN, SKIPPED, FAILED = "ran", "skipped_not_leader", "failed"
RESULTS = (RAN, SKIPPED, FAILED)
RENEWALS_PER_LEASE = 3
# What a tick did (one of RESULTS, or None: the holder only renewed its lease) and whether this
# process holds the lease afterwards.
TickObserver = Callable[[str | None, bool], None]


@dataclass(frozen=True)
class Schedule:
    every: timedelta  # how often the work runs in the cluster
    lease: timedelta  # the lease's time to live

    @property
    def tick(self) -> timedelta:
        return min(self.every, self.lease / RENEWALS_PER_LEASE)


def holder_id() -> str:
    """This process among the cluster's gateways: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class MonitoringScheduler:
    """Scheduled work once per cluster on the system clock; a companion of the HTTP app,
    started inside its event loop."""

    def __init__(self, service: RemsService, schedule: Schedule, observe: TickObserver) -> None:
        self.service = service
        self.schedule = schedule
        self.observe = observe
        self.holder = holder_id()
        self.holds = False
        self._next_run: datetime | None = None  # None: at once, if this process holds the lease
        self._scheduler: AsyncIOScheduler | None = None

    async def start(self) -> None:
        # Ticks come every few seconds: APScheduler's two lines per run would drown the log.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.schedule.tick.total_seconds(),
            id="monitoring",
            coalesce=True,  # after a pause, run once, not once per missed interval
            max_instances=1,
            next_run_time=datetime.now(UTC),  # at start-up: catch up after downtime
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler started", extra={"holder": self.holder})

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)  # a tick in flight is cancelled
            self._scheduler = None
        try:  # queued behind any unit of that tick, so it is the last word
            await self.service.release_lease(self.holder, datetime.now(UTC))
        except Exception as exc:  # the lease then runs out by itself
            log.warning("scheduler lease not released: %s", type(exc).__name__)
        self.holds = False
        self.observe(None, False)

    async def tick(self) -> None:
        now = datetime.now(UTC)
        held = self.holds
        try:
            result = await (self._run(now) if self._due(now) else self._renew(now))
        except Exception as exc:  # logged as its type and place (logs.py), never its text
            log.error("scheduled work failed", exc_info=exc)
            self.holds, result = False, FAILED
            self._next_run = now + self.schedule.every  # tried again in an interval, not a tick
        if held != self.holds and result != FAILED:
            log.info("scheduler lease " + ("taken" if self.holds else "lost"))
        self.observe(result, self.holds)

    def _due(self, now: datetime) -> bool:
        return self._next_run is None or now >= self._next_run

    async def _renew(self, now: datetime) -> str | None:
        self.holds = await self.service.take_lease(self.holder, now, self.schedule.lease)
        return None if self.holds else self._skipped()

    async def _run(self, now: datetime) -> str:
        found = await self.service.run_scheduled_as(self.holder, now, self.schedule.lease)
        self.holds = found is not None
        if found is None:
            return self._skipped()
        self._next_run = now + self.schedule.every
        flagged = sum(1 for findings in found.values() if findings)
        log.info("scheduled work done", extra={"patients": len(found), "flagged": flagged})
        return RAN

    def _skipped(self) -> str:
        self._next_run = None  # the tick that takes the lease runs the work at once
        log.debug("scheduled work skipped: another gateway holds the scheduler lease")
        return SKIPPED
