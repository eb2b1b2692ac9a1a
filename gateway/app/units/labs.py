"""Lab results into the patient's file (§1): observations stored as received, the specimen's ANCs
re-derived, re-sends recognised as the same result. Called inside the service's units of work.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.units import identity, worklist
from gateway.app.values import LabOutcome, Source
from rems_core.anc import (
    cancelled,
    is_anc_relevant,
    same_result,
    specimen_ancs,
    with_repeat_advice,
)
from rems_core.codes import Code, finding
from rems_core.identity import Candidate
from rems_core.model import (
    AncCategory,
    AncResult,
    LabResult,
    Patient,
    ReportedAnc,
    ResultStatus,
)
from rems_core.rulepack import RulePack
from rems_core.store.repo import Store, observation_row, specimen_key


def ingest(
    ctx: UnitContext,
    store: Store,
    candidates: list[Candidate],
    results: list[LabResult],
    source: Source,
    received: datetime,
    resources: tuple[str, ...] = (),
) -> LabOutcome:
    """Results of one patient: filed to the registry patient the candidates name, else held for
    review. ``resources``: the FHIR Observations ("Observation/id") they came as, if they did."""
    pack = ctx.lab_pack()
    relevant = once_each(pack, [r for r in results if is_anc_relevant(pack, r.code)])
    found = identity.match(store, candidates)
    if found.patient is None:
        outcome = _held(ctx, store, found, candidates, relevant, source, received, resources)
    else:
        stored = store_results(
            ctx, store, found.patient, relevant, source, received, as_resources=not resources
        )
        outcome = LabOutcome(found.patient.rems_id, tuple(stored))
    store.append_audit(audit_records.labs(ctx.now(), source, results, outcome, received, pack))
    return outcome


def _held(
    ctx: UnitContext,
    store: Store,
    found: identity.Match,
    candidates: list[Candidate],
    results: list[LabResult],
    source: Source,
    received: datetime,
    resources: tuple[str, ...],
) -> LabOutcome:
    code = Code.PATIENT_AMBIGUOUS if found.ambiguous else Code.PATIENT_NOT_MATCHED
    warning = finding(code)
    review_id = identity.hold(
        ctx,
        store,
        identity.Held(
            kind=identity.AMBIGUOUS if found.ambiguous else identity.UNMATCHED,
            candidates=candidates,
            source=source,
            received=received,
            findings=(warning,),
            results=results,
            patients=[p.rems_id for p in found.patients],
            resources=resources,
            message=source.message_ref,
        ),
    )
    return LabOutcome(None, (), (warning,), review_id)


def store_results(
    ctx: UnitContext,
    store: Store,
    patient: Patient,
    results: list[LabResult],
    source: Source,
    received: datetime,
    as_resources: bool = False,
) -> list[AncResult]:
    """``as_resources``: the results are Observations of the patient's FHIR record (lab results
    that did not come as FHIR Observations; rendered when read)."""
    pack = ctx.lab_pack()
    results = once_each(pack, results)
    file = PatientObservations.read(store, patient.rems_id, results)
    origin = source_uri(source) if as_resources else ""
    rows = NewObservations(store, patient.rems_id, received, source.channel, origin)
    touched: dict[str, list[LabResult]] = {}
    repeated: set[str] = set()
    late_preliminaries: list[AncResult] = []
    for result in results:
        known = file.stored_as(pack, result)
        if known is not None:
            repeated.add(known)
        elif file.behind_a_final(result):
            rows.add(result, current=False)
            late_preliminaries += specimen_ancs(pack, patient.designation, [result])
        else:
            key = specimen_key(result)
            if file.replace(key, result):
                rows.supersede(key, result.code)
            rows.add(result)
            touched.setdefault(key, []).append(result)
    rows.write()
    reported = store.specimen_ancs(patient.rems_id, repeated - touched.keys())
    reported += late_preliminaries
    derived = {key: specimen_ancs(pack, patient.designation, file.of(key)) for key in touched}
    earlier = _earlier_ancs(store, patient, pack, [a for ancs in derived.values() for a in ancs])
    for key, arrived in touched.items():
        ancs = [
            replace(
                with_repeat_advice(pack, a, earlier.get(a.drawn, [])),
                result_id=ctx.ids.new_id("anc"),
                received=received,
            )
            for a in derived[key]
        ]
        sources = {r.code: r for r in file.of(key)}
        store.replace_specimen_ancs(
            patient.rems_id, key, ancs, sources, received, supersede=file.had(key)
        )
        withdrawn = [cancelled(r) for r in arrived if r.status == ResultStatus.CANCELLED]
        reported += ancs or withdrawn
    if _worklist_may_change(store, patient, derived, results):
        worklist.refresh_for(ctx, store, patient, received, source)
    return reported


def on_file(ctx: UnitContext, store: Store, patient: Patient, results: list[LabResult]) -> bool:
    """Every REMS-relevant result is stored already as it is (storing them again would change
    nothing but the audit trail)."""
    pack = ctx.lab_pack()
    relevant = once_each(pack, [r for r in results if is_anc_relevant(pack, r.code)])
    file = PatientObservations.read(store, patient.rems_id, relevant)
    return all(file.stored_as(pack, r) is not None for r in relevant)


def _worklist_may_change(
    store: Store, patient: Patient, derived: dict[str, list[AncResult]], results: list[LabResult]
) -> bool:
    """New or withdrawn ANCs change the worklist only where work is open (a new ANC may close
    it, a withdrawn one reopen it) or when one is low (a rationale may be needed). Drafts and
    reminders that fall due otherwise appear with the scheduled work."""
    ancs = [a for found in derived.values() for a in found]
    withdrawn = any(r.status == ResultStatus.CANCELLED for r in results)
    if not ancs and not withdrawn:
        return False
    low = any(a.category not in (None, AncCategory.NORMAL) for a in ancs)
    return low or store.has_open_work(patient.rems_id)


def once_each(pack: RulePack, results: list[LabResult]) -> list[LabResult]:
    """The same result twice in one message or Bundle is one result (§5.3 sameness): the first
    is kept. Sameness here also needs the same specimen and status; a value that cannot be read
    is the same only as the same text and unit."""
    kept: list[LabResult] = []
    seen: dict[tuple[str, str, datetime, ResultStatus], list[LabResult]] = {}
    for result in results:
        earlier = seen.setdefault(
            (result.code, specimen_key(result), result.drawn, result.status), []
        )
        if not any(_same(pack, e, result) for e in earlier):
            earlier.append(result)
            kept.append(result)
    return kept


def _same(pack: RulePack, a: LabResult, b: LabResult) -> bool:
    return (a.value, a.unit) == (b.value, b.unit) or same_result(pack, a, b)


def _earlier_ancs(
    store: Store, patient: Patient, pack: RulePack, ancs: list[AncResult]
) -> dict[datetime, list[AncResult]]:
    """The newest usable ANC drawn before each low result (§2's repeat advice needs only that),
    read before any of this message's ANCs is stored. Normal results need none."""
    low = {a.drawn for a in ancs if a.usable and a.category not in (None, AncCategory.NORMAL)}
    newest = {drawn: store.newest_usable_anc(patient.rems_id, drawn) for drawn in low}
    return {drawn: [a] for drawn, a in newest.items() if a is not None}


class PatientObservations:
    """The patient's current observations that one message can replace or repeat, read once and
    kept in step with what the message stores."""

    def __init__(self, rows: list[tuple[str, LabResult]]) -> None:
        self.by_specimen: dict[str, dict[str, LabResult]] = {}
        for key, result in rows:
            self.by_specimen.setdefault(key, {})[result.code] = result
        self.before = set(self.by_specimen)

    @classmethod
    def read(cls, store: Store, patient_id: str, results: list[LabResult]) -> PatientObservations:
        keys = {specimen_key(r) for r in results}
        return cls(store.observations_touching(patient_id, keys, {r.drawn for r in results}))

    def of(self, key: str) -> list[LabResult]:
        return list(self.by_specimen.get(key, {}).values())

    def had(self, key: str) -> bool:
        """Whether the specimen had current observations before this message."""
        return key in self.before

    def replace(self, key: str, result: LabResult) -> bool:
        """``result`` is now current for its specimen and code (a cancellation withdraws it);
        whether it replaced a current one."""
        specimen = self.by_specimen.setdefault(key, {})
        replaced = specimen.pop(result.code, None) is not None
        if result.status != ResultStatus.CANCELLED:
            specimen[result.code] = result
        return replaced

    def stored_as(self, pack: RulePack, result: LabResult) -> str | None:
        """The specimen key under which the same result is already stored (a re-send), if any."""
        if result.status in (ResultStatus.CANCELLED, ResultStatus.PRELIMINARY):
            return None
        for key, specimen in self.by_specimen.items():
            stored = specimen.get(result.code)
            if (
                stored is not None
                and stored.drawn == result.drawn
                and stored.status != ResultStatus.PRELIMINARY
                and same_result(pack, stored, result)
            ):
                return key
        return None

    def behind_a_final(self, result: LabResult) -> bool:
        """A preliminary that arrives after the final (or corrected) result never replaces it."""
        if result.status != ResultStatus.PRELIMINARY:
            return False
        stored = self.by_specimen.get(specimen_key(result), {}).get(result.code)
        return stored is not None and stored.status in (
            ResultStatus.FINAL,
            ResultStatus.CORRECTED,
        )


class NewObservations:
    """A message's observations, stored in one round trip; one replaced within the message is
    simply stored as not current. ``source``: their meta.source as Observations of the patient's
    FHIR record ("" when they came as FHIR Observations)."""

    def __init__(
        self, store: Store, patient_id: str, received: datetime, channel: str, source: str = ""
    ) -> None:
        self.store, self.patient_id = store, patient_id
        self.received, self.channel, self.source = received, channel, source
        self.rows: list[dict[str, Any]] = []
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, result: LabResult, current: bool = True) -> None:
        row = observation_row(
            self.patient_id, result, self.received, self.channel, current, self.source
        )
        self.rows.append(row)
        if row["current"]:
            self.pending[(row["specimen_key"], result.code)] = row

    def supersede(self, key: str, code: str) -> None:
        row = self.pending.pop((key, code), None)
        if row is not None:
            row["current"] = False
        else:
            self.store.supersede_observation(self.patient_id, key, code)

    def write(self) -> None:
        self.store.add_observations(self.rows)


def source_uri(source: Source) -> str:
    """meta.source: the channel, the sender (or client) and the message's control id."""
    uri = f"urn:rems-gateway:{source.channel}:{quote(source.actor, safe='')}"
    return f"{uri}#{quote(source.message, safe='')}" if source.message else uri


def store_reported_ancs(
    ctx: UnitContext,
    store: Store,
    patient: Patient | None,
    reported: tuple[ReportedAnc, ...],
    received: datetime,
    source: Source,
) -> list[AncResult]:
    """ANCs carried on a PSF or an override are lab results like any other (§5.3)."""
    if patient is None or not reported:
        return []
    results = [LabResult(a.code, a.value, a.unit, a.drawn) for a in reported]
    return store_results(ctx, store, patient, results, source, received)
