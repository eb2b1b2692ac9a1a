"""Reads and writes of one unit of work, over one SQLAlchemy connection (Core, for speed).

The caller owns the transaction; nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Connection, bindparam, insert, or_, select, union_all, update

from rems_core.audit import AuditEntry, ChainHead, chained, columns
from rems_core.model import (
    AncCategory,
    AncResult,
    Finding,
    LabResult,
    Patient,
    PatientSnapshot,
    PatientStatusForm,
    PsfStatus,
    ResultStatus,
    StoredPsf,
)
from rems_core.store import tables as t
from rems_core.store.cds_repo import CdsRepo
from rems_core.store.console_repo import ConsoleRepo
from rems_core.store.fhir_repo import FhirRepo
from rems_core.store.lease_repo import LeaseRepo
from rems_core.store.message_repo import MessageRepo
from rems_core.store.parties_repo import PartiesRepo
from rems_core.store.prepared import PreparedInsert, PreparedQuery, QueryFamily
from rems_core.store.rda_repo import RdaRepo
from rems_core.store.registry_repo import RegistryRepo
from rems_core.store.review_repo import ReviewRepo
from rems_core.store.subscription_repo import SubscriptionRepo
from rems_core.store.worklist_repo import WorklistRepo

FORM = TypeAdapter(PatientStatusForm)

observation_t = t.ObservationRow.__table__
anc_t = t.AncResultRow.__table__
psf_t = t.PsfRow.__table__
status_event_t = t.StatusEvent.__table__
decision_t = t.DecisionRow.__table__
rda_t = t.RdaRow.__table__
override_t = t.OverrideRow.__table__
alert_t = t.MonitoringAlert.__table__
audit_t = t.AuditRecord.__table__
head_t = t.AuditHead.__table__


# Hot-path statements are built and compiled once: that costs more than running them.
_current_ancs = PreparedQuery(
    select(anc_t).where(anc_t.c.patient_id == bindparam("patient_id"), anc_t.c.current.is_(True))
)
_live_psfs = PreparedQuery(
    select(psf_t.c.id, psf_t.c.form, psf_t.c.status, psf_t.c.judged_at)
    .where(
        psf_t.c.patient_id == bindparam("patient_id"), psf_t.c.status != PsfStatus.REJECTED.value
    )
    .order_by(psf_t.c.judged_at)
)
_override_dates = PreparedQuery(
    select(override_t.c.at).where(override_t.c.patient_id == bindparam("patient_id"))
)
_decision_by_request = select(decision_t.c.request_hash, decision_t.c.result).where(
    decision_t.c.request_id == bindparam("request_id")
)
_observation_columns = [
    observation_t.c[name]
    for name in ("id", "specimen_key", "code", "value", "unit", "status", "drawn")
]
_current_observation = (observation_t.c.patient_id == bindparam("patient_id")) & (
    observation_t.c.current.is_(True)
)


def _in(column: Any, name: str, count: int) -> Any:
    """``column IN (:name0, :name1, …)``: one compiled statement per list length."""
    return column.in_([bindparam(f"{name}{i}", type_=column.type) for i in range(count)])


def _named_list(name: str, values: Iterable[Any]) -> dict[str, Any]:
    return {f"{name}{i}": value for i, value in enumerate(values)}


_observations_touching = QueryFamily(
    lambda keys, drawns: union_all(  # two index lookups: SQLite would not use both for an OR
        select(*_observation_columns).where(
            _current_observation, _in(observation_t.c.specimen_key, "key", keys)
        ),
        select(*_observation_columns).where(
            _current_observation, _in(observation_t.c.drawn, "drawn", drawns)
        ),
    )
)
_newest_usable_anc = PreparedQuery(
    select(anc_t)
    .where(
        anc_t.c.patient_id == bindparam("patient_id"),
        anc_t.c.current.is_(True),
        anc_t.c.usable.is_(True),
        anc_t.c.drawn < bindparam("before"),
    )
    .order_by(anc_t.c.drawn.desc(), anc_t.c.received.desc())
    .limit(1)
)
_specimen_ancs = QueryFamily(
    lambda keys: select(anc_t).where(
        anc_t.c.patient_id == bindparam("patient_id"),
        anc_t.c.current.is_(True),
        _in(anc_t.c.specimen_key, "key", keys),
    )
)
_chain_head = PreparedQuery(select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == 1))
_locked_chain_head = PreparedQuery(
    select(head_t.c.seq, head_t.c.hash, head_t.c.registry_version)
    .where(head_t.c.id == 1)
    .with_for_update()
)
_insert_audit = PreparedInsert(insert(audit_t))
_new_head = {"seq": bindparam("seq"), "hash": bindparam("hash")}
_move_head = PreparedQuery(update(head_t).where(head_t.c.id == 1).values(**_new_head))
_move_head_and_registry = PreparedQuery(
    update(head_t)
    .where(head_t.c.id == 1)
    .values(**_new_head, registry_version=head_t.c.registry_version + 1)
)
_supersede_observation = PreparedQuery(
    update(observation_t)
    .where(
        observation_t.c.patient_id == bindparam("of_patient"),
        observation_t.c.specimen_key == bindparam("of_key"),
        observation_t.c.code == bindparam("of_code"),
        observation_t.c.current.is_(True),
    )
    .values(current=False)
)
_insert_observation = PreparedInsert(insert(observation_t))
_supersede_ancs = PreparedQuery(
    update(anc_t)
    .where(
        anc_t.c.patient_id == bindparam("of_patient"), anc_t.c.specimen_key == bindparam("of_key")
    )
    .values(current=False)
)
_insert_anc = PreparedInsert(insert(anc_t))
_insert_decision = insert(decision_t)
_insert_override = insert(override_t)


def _observation(row: Any) -> LabResult:
    return LabResult(
        code=row.code,
        value=row.value,
        unit=row.unit,
        drawn=row.drawn,
        status=ResultStatus(row.status),
        specimen=None if row.specimen_key.startswith("drawn:") else row.specimen_key,
    )


def observation_row(
    patient_id: str | None,
    result: LabResult,
    received: datetime,
    channel: str,
    current: bool = True,
    source: str = "",
) -> dict[str, Any]:
    """A reported observation as stored: the original value and unit, never rewritten. A
    cancelled result is kept for the record but is never current."""
    return {
        "patient_id": patient_id,
        "specimen_key": specimen_key(result),
        "code": result.code,
        "value": result.value,
        "unit": result.unit,
        "status": result.status.value,
        "drawn": result.drawn,
        "received": received,
        "current": current and result.status != ResultStatus.CANCELLED,
        "channel": channel,
        "source": source,
    }


def _anc(r: Any) -> AncResult:
    return AncResult(
        anc=r.anc,
        drawn=r.drawn,
        category=AncCategory(r.category) if r.category else None,
        usable=r.usable,
        derived=r.derived,
        specimen=None if r.specimen_key.startswith("drawn:") else r.specimen_key,
        code=r.code,
        status=ResultStatus(r.status),
        warnings=_findings(r.warnings or []),
        advice=r.advice,
        result_id=r.id,
        received=r.received,
    )


def _anc_row(
    patient_id: str, key: str, anc: AncResult, sources: dict[str, LabResult], received: datetime
) -> dict[str, Any]:
    source = sources.get(anc.code)
    return {
        "id": anc.result_id,
        "patient_id": patient_id,
        "specimen_key": key,
        "code": anc.code,
        "anc": anc.anc,
        "original_value": source.value if source else "",
        "original_unit": source.unit if source else "",
        "category": anc.category.value if anc.category else None,
        "usable": anc.usable,
        "derived": anc.derived,
        "status": anc.status.value,
        "warnings": [w.as_dict() for w in anc.warnings],
        "advice": anc.advice,
        "drawn": anc.drawn,
        "received": received,
        "current": True,
    }


def specimen_key(result: LabResult | AncResult) -> str:
    """Results of one specimen share it; without an accession id, the draw time stands in."""
    return result.specimen or f"drawn:{result.drawn.isoformat()}"


def _findings(rows: Iterable[dict[str, str]]) -> tuple[Finding, ...]:
    return tuple(Finding(r["code"], r["text"]) for r in rows)


def _judgement(
    psf: StoredPsf, reasons: Iterable[Finding], warnings: Iterable[Finding], pack: tuple[str, str]
) -> dict[str, Any]:
    """The columns a PSF's (re-)judgement sets."""
    return {
        "status": psf.status.value,
        "judged_at": psf.judged_at,
        "form": FORM.dump_python(psf.form, mode="json"),
        "reasons": [r.as_dict() for r in reasons],
        "warnings": [w.as_dict() for w in warnings],
        "rule_pack": pack[0],
        "rule_pack_version": pack[1],
    }


class Store(
    RegistryRepo,
    PartiesRepo,
    MessageRepo,
    FhirRepo,
    ReviewRepo,
    RdaRepo,
    WorklistRepo,
    SubscriptionRepo,
    LeaseRepo,
    CdsRepo,
    ConsoleRepo,
):
    """One unit of work's reads and writes."""

    def __init__(self, conn: Connection, defer: bool = False) -> None:
        self.conn = conn
        self.defer = defer  # send some rows once per batch (see _write)
        self.forget_cached()
        self.head: ChainHead | None = None  # while the chain head is locked for a batch
        self._flushed: ChainHead | None = None
        self.registry_version = -1
        self.registry_changed = False
        self._deferred: dict[PreparedInsert, list[dict[str, Any]]] = {}

    # --- lab results -----------------------------------------------------------------------

    def observations_touching(
        self, patient_id: str, keys: Iterable[str], drawn: Iterable[datetime]
    ) -> list[tuple[str, LabResult]]:
        """Current observations of these specimens, or drawn at these times, with their specimen
        keys, oldest first: everything a message of results can replace or repeat."""
        keys, drawn = list(keys), list(drawn)
        if not keys or not drawn:  # every result has both: none asked, none to read
            return []
        rows = _observations_touching(len(keys), len(drawn)).rows(
            self.conn,
            {"patient_id": patient_id} | _named_list("key", keys) | _named_list("drawn", drawn),
        )
        unique = {r.id: r for r in rows}  # a row may match both ways
        return [(r.specimen_key, _observation(r)) for _, r in sorted(unique.items())]

    def add_observations(self, rows: list[dict[str, Any]]) -> None:
        """Store reported observations (see ``observation_row``), in one round trip."""
        _insert_observation.run(self.conn, rows)

    def supersede_observation(self, patient_id: str, key: str, code: str) -> None:
        """The current observation of a specimen and code is replaced (corrected, cancelled)."""
        _supersede_observation.run(
            self.conn, {"of_patient": patient_id, "of_key": key, "of_code": code}
        )

    def replace_specimen_ancs(
        self,
        patient_id: str,
        key: str,
        ancs: list[AncResult],
        sources: dict[str, LabResult],
        received: datetime,
        supersede: bool = True,
    ) -> None:
        """The specimen's ANCs are now ``ancs``. ``supersede`` may be false only when the specimen
        had no current observation before, as it then has no current ANC either."""
        if supersede:
            _supersede_ancs.run(self.conn, {"of_patient": patient_id, "of_key": key})
        _insert_anc.run(self.conn, [_anc_row(patient_id, key, a, sources, received) for a in ancs])

    def anc_results(self, patient_id: str) -> list[AncResult]:
        """Every current ANC of the patient (the engine's view)."""
        return [_anc(r) for r in _current_ancs.rows(self.conn, {"patient_id": patient_id})]

    def newest_usable_anc(self, patient_id: str, before: datetime) -> AncResult | None:
        row = _newest_usable_anc.first(self.conn, {"patient_id": patient_id, "before": before})
        return _anc(row) if row is not None else None

    def specimen_ancs(self, patient_id: str, keys: Iterable[str]) -> list[AncResult]:
        """The current ANCs of these specimens (none asked: none, without a query)."""
        keys = list(keys)
        if not keys:
            return []
        rows = _specimen_ancs(len(keys)).rows(
            self.conn, {"patient_id": patient_id} | _named_list("key", keys)
        )
        return [_anc(r) for r in rows]

    # --- PSFs ---------------------------------------------------------------------------------

    def add_psf(
        self,
        psf: StoredPsf,
        patient_id: str,
        reasons: Iterable[Finding],
        warnings: Iterable[Finding],
        pack: tuple[str, str],
        source: str,
    ) -> None:
        self.conn.execute(
            insert(psf_t).values(
                id=psf.psf_id,
                patient_id=patient_id,
                type=psf.form.type.value,
                submitted_at=psf.form.submitted_at,
                source=source,
                **_judgement(psf, reasons, warnings, pack),
            )
        )

    def update_psf(
        self,
        psf: StoredPsf,
        reasons: Iterable[Finding],
        warnings: Iterable[Finding],
        pack: tuple[str, str],
    ) -> None:
        self.conn.execute(
            update(psf_t)
            .where(psf_t.c.id == psf.psf_id)
            .values(**_judgement(psf, reasons, warnings, pack))
        )

    def registry_enrollment_exists(self, patient_id: str) -> bool:
        return (
            self.conn.execute(
                select(psf_t.c.id).where(
                    psf_t.c.patient_id == patient_id, psf_t.c.source == "registry"
                )
            ).first()
            is not None
        )

    def psfs(self, patient_id: str) -> list[StoredPsf]:
        rows = _live_psfs.rows(self.conn, {"patient_id": patient_id})
        return [
            StoredPsf(r.id, FORM.validate_python(r.form), PsfStatus(r.status), r.judged_at)
            for r in rows
        ]

    def add_status_event(
        self, patient_id: str, at: datetime, before: str, after: str, actor: str, why: str
    ) -> None:
        self.conn.execute(
            insert(status_event_t).values(
                patient_id=patient_id,
                at=at,
                from_status=before,
                to_status=after,
                actor=actor,
                why=why,
            )
        )

    # --- decisions ------------------------------------------------------------------------------

    def decision_for_request(self, request_id: str) -> tuple[str, dict[str, Any]] | None:
        row = self.conn.execute(_decision_by_request, {"request_id": request_id}).first()
        return (row.request_hash, row.result) if row else None

    def decision_by_case_number(self, case_number: str) -> dict[str, Any] | None:
        """The stored result of the decision a decision id or an RDA number names."""
        by_rda = select(rda_t.c.decision_id).where(rda_t.c.number == case_number)
        row = self.conn.execute(
            select(decision_t.c.result).where(
                or_(decision_t.c.id == case_number, decision_t.c.id == by_rda.scalar_subquery())
            )
        ).first()
        return row.result if row is not None else None

    def decision_record(self, decision_id: str) -> tuple[dict[str, Any], datetime] | None:
        """A decision's stored result and when it was recorded."""
        row = self.conn.execute(
            select(decision_t.c.result, decision_t.c.decided_at).where(
                decision_t.c.id == decision_id
            )
        ).first()
        return (row.result, row.decided_at) if row is not None else None

    def add_decision(self, values: dict[str, Any]) -> None:
        self.conn.execute(_insert_decision, values)

    def _write(self, statement: PreparedInsert, values: dict[str, Any]) -> None:
        """Rows rarely read again within the batch (RDAs, audit records, HL7 messages) are
        sent together at its end, one round trip per table; outside a batch, at once."""
        if self.head is None or not self.defer:
            statement.run(self.conn, [values])
        else:
            self._deferred.setdefault(statement, []).append(values)

    def add_override(self, values: dict[str, Any]) -> None:
        self.conn.execute(_insert_override, values)

    def override_dates(self, patient_id: str) -> list[datetime]:
        return [r.at for r in _override_dates.rows(self.conn, {"patient_id": patient_id})]

    # --- scheduled work -----------------------------------------------------------------------

    def latest_alert(self, patient_id: str, code: str) -> datetime | None:
        return self.conn.execute(
            select(alert_t.c.at)
            .where(alert_t.c.patient_id == patient_id, alert_t.c.code == code)
            .order_by(alert_t.c.at.desc())
        ).scalar()

    def add_alert(self, patient_id: str, code: str, at: datetime, detail: str) -> None:
        self.conn.execute(
            insert(alert_t).values(patient_id=patient_id, code=code, at=at, detail=detail)
        )

    # --- audit (§9) ---------------------------------------------------------------------------

    def lock_chain_head(self) -> ChainHead:
        """Take the chain head's row lock: writers of every process append in one order. Until
        ``flush_chain_head``, appends move the head in memory (one UPDATE per batch)."""
        seq, hash_, self.registry_version = _locked_chain_head.rows(self.conn)[0]
        self.head = self._flushed = ChainHead(seq, hash_)
        return self.head

    def flush_chain_head(self) -> None:
        """Write the deferred rows and the moved head; a registry change also bumps the registry
        version."""
        for statement, rows in self._deferred.items():
            statement.run(self.conn, rows)
        self._deferred.clear()
        if self.registry_changed:
            statement = _move_head_and_registry
        elif self.head is not None and self.head != self._flushed:
            statement = _move_head
        else:
            return
        assert self.head is not None
        statement.run(self.conn, {"seq": self.head.seq, "hash": self.head.hash})
        self._flushed, self.registry_changed = self.head, False

    def chain_head(self) -> ChainHead:
        seq, hash_ = _chain_head.rows(self.conn)[0]
        return ChainHead(seq, hash_)

    def append_audit(self, entry: AuditEntry) -> AuditEntry:
        locked = self.head is not None
        record = chained(entry, self.head if locked else self.chain_head())
        self._write(_insert_audit, columns(record))
        if locked:
            self.head = ChainHead(record.seq, record.hash)
        else:
            _move_head.run(self.conn, {"seq": record.seq, "hash": record.hash})
        return record

    def audit_records(self, batch: int = 1000) -> Iterator[AuditEntry]:
        """Every record in chain order, read in batches."""
        after = 0
        while True:
            rows = self.conn.execute(
                select(audit_t).where(audit_t.c.seq > after).order_by(audit_t.c.seq).limit(batch)
            ).all()
            for row in rows:
                values = row._asdict()
                values["reasons"] = tuple(values["reasons"])
                values["warnings"] = tuple(values["warnings"])
                yield AuditEntry(**values)
            if len(rows) < batch:
                return
            after = rows[-1].seq

    # --- the engine's view ---------------------------------------------------------------------

    def snapshot(
        self,
        patient: Patient | None,
        prescriber_npis: Iterable[str] = (),
        pharmacy_npis: Iterable[str] = (),
    ) -> PatientSnapshot:
        if patient is None:
            return PatientSnapshot(
                patient=None,
                prescribers=self.prescribers(prescriber_npis),
                pharmacies=self.pharmacies(pharmacy_npis),
            )
        psfs = self.psfs(patient.rems_id)
        npis = {*prescriber_npis, *(p.form.prescriber_npi for p in psfs)}
        return PatientSnapshot(
            patient=patient,
            anc_results=tuple(self.anc_results(patient.rems_id)),
            psfs=tuple(psfs),
            override_dates=tuple(self.override_dates(patient.rems_id)),
            prescribers=self.prescribers(npis),
            pharmacies=self.pharmacies(pharmacy_npis),
        )
