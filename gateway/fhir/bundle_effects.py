"""Which entry of a transaction Bundle reports which REMS effect.

The rules judge a patient's results together (a WBC and a neutrophil % yield one derived ANC),
so a transaction's outcomes are per patient. Each ANC is reported once, on the entry it comes
from: a direct ANC on its Observation; a derived one on the DiagnosticReport listing its inputs,
else on the last input. Findings about the subject (e.g. `PATIENT_NOT_MATCHED`) are reported on
every Observation of that subject.
"""

from __future__ import annotations

from typing import Any

from gateway.app.values import LabsRecorded, LabSubmission
from gateway.fhir.bundle_entries import REPORT, Entry
from mappings.fhir.outcome import Issue, lab_issues
from rems_core.model import AncResult
from rems_core.store.repo import specimen_key

ALREADY_STORED = Issue("information", "informational", "already stored: not processed again")


Fresh = list[tuple[Entry, LabSubmission]]


def effects(
    entries: list[Entry], submissions: list[LabSubmission], done: LabsRecorded
) -> dict[int, list[Issue]]:
    """Entry index → its issues. ``entries`` are the Observations (aligned with
    ``submissions``) followed by the DiagnosticReports, aligned with ``done.recorded``."""
    found: dict[int, list[Issue]] = {}
    for entry, made in zip(entries, submissions, strict=False):
        if made.warnings:
            found.setdefault(entry.index, []).extend(lab_issues((), made.warnings))
    for entry, recorded in zip(entries, done.recorded, strict=False):
        if recorded.unchanged:
            found.setdefault(entry.index, []).append(ALREADY_STORED)
    reports = [e for e in entries if e.resource_type == REPORT]
    for outcome, taken in zip(done.outcomes, done.sources, strict=True):
        group = [(entries[number], submissions[number]) for number in taken]
        for entry, _ in group:
            found.setdefault(entry.index, []).extend(lab_issues((), outcome.warnings))
        for anc in outcome.results:
            owner = _owner(anc, group, reports)
            found.setdefault(owner.index, []).extend(lab_issues([anc]))
    return found


def _owner(anc: AncResult, group: Fresh, reports: list[Entry]) -> Entry:
    key = specimen_key(anc)
    inputs = [(e, s) for e, s in group if s.result is not None and specimen_key(s.result) == key]
    if not anc.derived:
        direct = [e for e, s in inputs if s.result is not None and s.result.code == anc.code]
        if direct:
            return direct[-1]
    named = {k for e, _ in inputs for k in e.keys}
    for report in reports:
        if named & set(_result_references(report.resource)):
            return report
    return (inputs or group)[-1][0]


def _result_references(report: dict[str, Any]) -> list[str]:
    results = report.get("result")
    items = results if isinstance(results, list) else []
    return [r["reference"] for r in items if isinstance(r, dict) and "reference" in r]
