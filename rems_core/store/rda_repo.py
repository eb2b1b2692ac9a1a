"""The RDA's life in the store: RDAs by number or by their order's request id, their state
changes, and the dispenses recorded against them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from rems_core.model import Rda
from rems_core.rda import IssuedRda, RdaState
from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert

rda_t = t.RdaRow.__table__
decision_t = t.DecisionRow.__table__
dispense_t = t.DispenseRecordRow.__table__

insert_rda = PreparedInsert(insert(rda_t))


def _issued(row: Any) -> IssuedRda:
    rda = Rda(
        number=row.number,
        valid_until=row.valid_until,
        patient=row.patient_id or "",
        pharmacy_npi=row.pharmacy_npi,
        prescriber_npi=row.prescriber_npi,
        max_days_supply=row.max_days_supply,
    )
    return IssuedRda(rda, row.decision_id, RdaState(row.state), row.state_at, row.state_why)


class RdaRepo:
    conn: Connection
    _deferred: dict[PreparedInsert, list[dict[str, Any]]]

    def _write(self, statement: PreparedInsert, values: dict[str, Any]) -> None: ...

    def add_rda(self, values: dict[str, Any]) -> None:
        self._write(insert_rda, values)

    def _send_deferred_rdas(self) -> None:
        """RDAs issued earlier in this batch are written before one is read."""
        insert_rda.run(self.conn, self._deferred.pop(insert_rda, []))

    def rda(self, number: str) -> IssuedRda | None:
        self._send_deferred_rdas()
        row = self.conn.execute(select(rda_t).where(rda_t.c.number == number)).first()
        return _issued(row) if row is not None else None

    def rda_for_request(self, request_id: str) -> IssuedRda | None:
        """The RDA of the decision whose request id (placer order number, MedicationRequest
        identifier) this is."""
        self._send_deferred_rdas()
        row = self.conn.execute(
            select(rda_t)
            .join(decision_t, decision_t.c.id == rda_t.c.decision_id)
            .where(decision_t.c.request_id == request_id)
        ).first()
        return _issued(row) if row is not None else None

    def rda_of_decision(self, decision_id: str) -> IssuedRda | None:
        self._send_deferred_rdas()
        row = self.conn.execute(select(rda_t).where(rda_t.c.decision_id == decision_id)).first()
        return _issued(row) if row is not None else None

    def set_rda_state(self, number: str, state: RdaState, at: datetime, why: str) -> None:
        self.conn.execute(
            update(rda_t)
            .where(rda_t.c.number == number)
            .values(state=state.value, state_at=at, state_why=why)
        )

    def rdas_issued_until(self, until: datetime) -> list[IssuedRda]:
        """The RDAs still `issued` whose validity ended by ``until``, oldest first."""
        self._send_deferred_rdas()
        rows = self.conn.execute(
            select(rda_t)
            .where(rda_t.c.state == RdaState.ISSUED.value, rda_t.c.valid_until < until)
            .order_by(rda_t.c.valid_until)
        ).all()
        return [_issued(r) for r in rows]

    def add_dispense_record(self, values: dict[str, Any]) -> None:
        self.conn.execute(insert(dispense_t).values(**values))

    def dispense_record_like(self, content_hash: str) -> dict[str, Any] | None:
        """The dispense first recorded with this content (a resend is answered from it)."""
        row = self.conn.execute(
            select(dispense_t)
            .where(dispense_t.c.content_hash == content_hash)
            .order_by(dispense_t.c.recorded_at)
            .limit(1)
        ).first()
        return dict(row._mapping) if row is not None else None
