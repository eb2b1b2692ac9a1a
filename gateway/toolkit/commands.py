"""What the toolkit's commands do, for `gateway/cli.py` (which only parses their options):
`explain` (reads only), `replay` (through the intake and the service) and their output."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.app.context import UnitContext
from gateway.app.reads import RemsReads
from gateway.app.values import Replayed, Source
from gateway.mllp.intake import Hl7Admission, Hl7Intake
from gateway.scenarios.live import schema_problem
from gateway.toolkit.explain import Explainer, ExplainError
from gateway.toolkit.explain_text import explanation_lines
from gateway.toolkit.progress import progress
from mappings.hl7v2.senders import SenderDirectory
from rems_core.rulepack import DEFAULT_PACK
from rems_core.store.db import make_engine, upgrade
from rems_core.store.message_repo import MessageFilter


class ToolkitError(ValueError):
    """Options or inputs that cannot be used: one line, exit 2."""


@dataclass(frozen=True)
class Configuration:
    """The gateway's configuration a command runs under (as `serve` would take it)."""

    senders: SenderDirectory
    rules: str = DEFAULT_PACK
    timezone: str = "UTC"

    def context(self) -> UnitContext:
        return UnitContext(rules=self.rules, tz=ZoneInfo(self.timezone))


# --- explain -----------------------------------------------------------------------------------


def explain(
    files: list[Path],
    db: str | None,
    config: Configuration,
    at: datetime | None = None,
    as_json: bool = False,
    reveal: bool = False,
) -> str:
    """The explanation of each file, as text or JSON; nothing is stored (``db`` is read
    through `RemsReads`, never migrated, never written)."""
    ctx = config.context()
    if db is not None:
        problem = schema_problem(db)
        if problem is not None:
            raise ToolkitError(problem)
    engine = make_engine(db) if db is not None else None
    try:
        reads = RemsReads(engine, ctx) if engine is not None else None
        # the message clock: each message is explained at its own time unless --at says
        admission = Hl7Admission(config.senders, ctx, clock="message")
        explainer = Explainer(ctx, admission, reads, at, reveal)
        try:
            explained = [asyncio.run(explainer.explain_file(path)) for path in files]
        except ExplainError as exc:
            raise ToolkitError(str(exc)) from None
    finally:
        if engine is not None:
            engine.dispose()
    if as_json:
        shown: Any = explained[0] if len(explained) == 1 else explained
        return json.dumps(shown, indent=2, ensure_ascii=False)
    return "\n\n".join("\n".join(explanation_lines(e)) for e in explained)


# --- replay ------------------------------------------------------------------------------------


def replay(db: str, wanted: MessageFilter, config: Configuration, source: Source) -> list[Replayed]:
    """Stored HL7 v2 messages processed again through the intake, one unit of work each."""
    from gateway.app.bootstrap import bootstrap

    upgrade(db)
    with bootstrap(db, config.context()) as gateway:
        stored = asyncio.run(gateway.reads.stored_messages(wanted))
        intake = Hl7Intake(gateway.service, config.senders)
        with progress("replaying", len(stored)) as advance:
            return asyncio.run(
                intake.replay_stored_messages(stored, source, lambda r: advance(r.control_id))
            )


def replay_line(replayed: Replayed) -> str:
    arrow = f"{replayed.before} → {replayed.after}"
    return f"{replayed.control_id}  {replayed.sender}  {arrow}  {replayed.note}"


def replay_summary(done: list[Replayed]) -> str:
    changed = sum(r.changed for r in done)
    return f"{len(done)} message(s) replayed: {changed} changed, {len(done) - changed} unchanged"
