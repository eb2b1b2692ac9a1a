"""The periodic side of §8: scheduled work up to "now", every few minutes, inside `serve`.

APScheduler 3 runs the job on the event loop; the work itself is one unit of work for the single
writer, and finds nothing new when it runs twice for the same time (restart-safe). With
``--clock message`` there is no "now" to run up to: scheduled work then runs only when asked
(``POST /admin/scheduled-work``, the scenario runner's ``advance_to``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.app.service import RemsService

log = logging.getLogger("rems_gateway.scheduler")


async def run_due_work(service: RemsService) -> None:
    found = await service.run_scheduled(datetime.now(UTC))
    flagged = sum(1 for findings in found.values() if findings)
    log.info("scheduled work done", extra={"patients": len(found), "flagged": flagged})


class MonitoringScheduler:
    """Scheduled work every ``every_minutes`` on the system clock, and once at start-up (to catch
    up after a restart); a companion of the HTTP app, started inside its event loop."""

    def __init__(self, service: RemsService, every_minutes: int) -> None:
        self.service = service
        self.every_minutes = every_minutes
        self._scheduler: AsyncIOScheduler | None = None

    async def start(self) -> None:
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            run_due_work,
            "interval",
            minutes=self.every_minutes,
            args=[self.service],
            id="monitoring",
            coalesce=True,  # after a pause, run once, not once per missed interval
            max_instances=1,
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
