"""Lab results into the patient's file (§1): observations stored as received, the specimen's ANCs
re-derived, re-sends recognised as the same result. Called inside the service's units of work.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from gateway import audit_log
from gateway.values import LabOutcome, Source
from rems_core.anc import (
    cancelled,
    is_anc_relevant,
    same_result,
    specimen_ancs,
    with_repeat_advice,
)
from rems_core.codes import Code, finding
from rems_core.model import AncResult, Identifier, LabResult, Patient, ReportedAnc, ResultStatus
from rems_core.store.repo import Store, specimen_key

if TYPE_CHECKING:
    from gateway.service import RemsService


def ingest(
    service: RemsService,
    store: Store,
    identifiers: list[Identifier],
    results: list[LabResult],
    source: Source,
    received: datetime,
) -> LabOutcome:
    pack = service.lab_pack()
    relevant = [r for r in results if is_anc_relevant(pack, r.code)]
    patient = store.find_patient(identifiers)
    if patient is None:
        for result in relevant:
            store.add_observation(None, result, received, source.channel, identifiers)
        outcome = LabOutcome(None, (), (finding(Code.PATIENT_NOT_MATCHED),))
    else:
        stored = store_results(service, store, patient, relevant, source, received)
        outcome = LabOutcome(patient.rems_id, tuple(stored))
    store.append_audit(audit_log.labs(source, results, outcome, received, pack))
    return outcome


def store_results(
    service: RemsService,
    store: Store,
    patient: Patient,
    results: list[LabResult],
    source: Source,
    received: datetime,
) -> list[AncResult]:
    pack = service.lab_pack()
    touched: dict[str, list[LabResult]] = {}
    repeated: set[str] = set()
    late_preliminaries: list[AncResult] = []
    for result in results:
        known = stored_as(service, store, patient, result)
        if known is not None:
            repeated.add(known)
        elif behind_a_final(store, patient, result):
            store.add_observation(
                patient.rems_id, result, received, source.channel, supersede=False
            )
            late_preliminaries += specimen_ancs(pack, patient.designation, [result])
        else:
            store.add_observation(patient.rems_id, result, received, source.channel)
            touched.setdefault(specimen_key(result), []).append(result)
    earlier = store.anc_results(patient.rems_id)
    reported = [a for a in earlier if specimen_key(a) in repeated - touched.keys()]
    reported += late_preliminaries
    for key, arrived in touched.items():
        current = store.current_observations(patient.rems_id, key)
        ancs = [
            replace(
                with_repeat_advice(pack, a, earlier),
                result_id=service.ids.new_id("anc"),
                received=received,
            )
            for a in specimen_ancs(pack, patient.designation, current)
        ]
        store.replace_specimen_ancs(
            patient.rems_id, key, ancs, {r.code: r for r in current}, received
        )
        withdrawn = [cancelled(r) for r in arrived if r.status == ResultStatus.CANCELLED]
        reported += ancs or withdrawn
    return reported


def behind_a_final(store: Store, patient: Patient, result: LabResult) -> bool:
    """A preliminary that arrives after the final (or corrected) result never replaces it."""
    if result.status != ResultStatus.PRELIMINARY:
        return False
    current = store.current_observations(patient.rems_id, specimen_key(result))
    return any(
        r.code == result.code and r.status in (ResultStatus.FINAL, ResultStatus.CORRECTED)
        for r in current
    )


def stored_as(
    service: RemsService, store: Store, patient: Patient, result: LabResult
) -> str | None:
    """The specimen key under which the same result is already stored (a re-send), if any."""
    if result.status in (ResultStatus.CANCELLED, ResultStatus.PRELIMINARY):
        return None
    for key, stored in store.current_observations_at(patient.rems_id, result.code, result.drawn):
        if stored.status != ResultStatus.PRELIMINARY and same_result(
            service.lab_pack(), stored, result
        ):
            return key
    return None


def store_reported_ancs(
    service: RemsService,
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
    return store_results(service, store, patient, results, source, received)
