"""`rems-gateway audit verify` and `audit checkpoint`: the audit chain checked end to end.

A checkpoint is the chain head written outside the database (a file the operator keeps
elsewhere), so that a truncation which also rewrote the head in the database is still found.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from rems_core.audit import ChainHead, Finding, verify
from rems_core.store.db import make_engine
from rems_core.store.repo import Store


def read_checkpoint(path: Path) -> ChainHead:
    data = json.loads(path.read_text(encoding="utf-8"))
    return ChainHead(int(data["seq"]), str(data["hash"]))


class ChainBroken(ValueError):
    """No checkpoint of a chain that does not verify."""


def write_checkpoint(url: str, path: Path, previous: ChainHead | None = None) -> ChainHead:
    """Verify the chain (against the previous checkpoint, if any), then write its head."""
    problem, head = verify_database(url, previous)
    if problem is not None:
        raise ChainBroken(str(problem))
    written = {"seq": head.seq, "hash": head.hash, "written_at": datetime.now(UTC).isoformat()}
    path.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    return head


def verify_database(
    url: str, checkpoint: ChainHead | None = None
) -> tuple[Finding | None, ChainHead]:
    """The first bad record (or None) and the head, read in one consistent snapshot."""
    engine = make_engine(url)
    try:
        # One snapshot for the head and every record, and no write lock held while reading.
        isolation = "REPEATABLE READ" if engine.dialect.name == "postgresql" else None
        options = {"read_only": True, **({"isolation_level": isolation} if isolation else {})}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            store = Store(conn)
            head = store.chain_head()
            return verify(store.audit_records(), head, checkpoint), head
    finally:
        engine.dispose()
