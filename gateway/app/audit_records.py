"""§9: the audit record of each kind of unit of work (appended inside that unit's transaction).

Inputs are recorded by hash and by a pointer to where the gateway stored them; the record itself
holds no names or identifier values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.app.values import LabOutcome, Source
from rems_core.audit import AuditEntry, digest, digest_of_plain
from rems_core.model import (
    Decision,
    DispenseRequest,
    Finding,
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfOutcome,
    to_plain,
)
from rems_core.rda import DispenseFiled, IssuedRda, RdaState
from rems_core.rulepack import RulePack


def _codes(findings: tuple[Finding, ...] | list[Finding]) -> tuple[str, ...]:
    return tuple(f.code for f in findings)


def _entry(recorded: datetime, source: Source, clinical_at: datetime, **fields: Any) -> AuditEntry:
    return AuditEntry(
        at=recorded,
        clinical_at=clinical_at,
        channel=source.channel,
        actor=source.actor,
        **fields,
    )


def dispense(
    recorded: datetime,
    source: Source,
    identifiers: list[Identifier],
    request: DispenseRequest,
    decision: Decision,
    request_digest: str,
) -> AuditEntry:
    return _entry(
        recorded,
        source,
        request.dispense_date,
        kind="dispense",
        subject=decision.patient,
        input_hash=request_digest,
        input_ref=f"decision/{decision.decision_id}",
        outcome=decision.outcome.value,
        rule_pack=decision.rule_pack,
        rule_pack_version=decision.rule_pack_version,
        reasons=_codes(decision.reasons),
        warnings=_codes(decision.warnings),
    )


def psf(
    recorded: datetime, source: Source, form: PatientStatusForm, outcome: PsfOutcome
) -> AuditEntry:
    return _psf_entry(recorded, source, "psf", form.submitted_at, to_plain(form), outcome)


def signature(
    recorded: datetime,
    source: Source,
    signer: str,
    psf_id: str | None,
    at: datetime,
    outcome: PsfOutcome,
) -> AuditEntry:
    signed = {"signer": signer, "psf": psf_id, "at": at.isoformat()}
    return _psf_entry(recorded, source, "psf_signature", at, signed, outcome)


def _psf_entry(
    recorded: datetime, source: Source, kind: str, at: datetime, received: Any, outcome: PsfOutcome
) -> AuditEntry:
    return _entry(
        recorded,
        source,
        at,
        kind=kind,
        subject=outcome.patient,
        input_hash=digest(received),
        input_ref=f"psf/{outcome.psf_id}" if outcome.psf_id else "",
        outcome=outcome.status.value,
        rule_pack=outcome.rule_pack,
        rule_pack_version=outcome.rule_pack_version,
        reasons=_codes(outcome.reasons),
        warnings=_codes(outcome.warnings),
    )


def labs(
    recorded: datetime,
    source: Source,
    results: list[LabResult],
    outcome: LabOutcome,
    received: datetime,
    pack: RulePack,
) -> AuditEntry:
    return _entry(
        recorded,
        source,
        received,
        kind="lab",
        subject=outcome.patient,
        input_hash=digest_of_plain(results),
        input_ref=",".join(sorted({a.result_id for a in outcome.results if a.result_id})),
        outcome="stored" if outcome.matched else "unmatched",
        rule_pack=pack.id,
        rule_pack_version=pack.version,
        warnings=_codes([*outcome.warnings, *(w for a in outcome.results for w in a.warnings)]),
    )


def registry_change(
    recorded: datetime,
    source: Source,
    subject: str,
    change: str,
    fields: list[str],
    entry: Any,
    at: datetime,
) -> AuditEntry:
    """A registry record inserted or updated: which fields, never their values."""
    return _entry(
        recorded,
        source,
        at,
        kind="registry",
        subject=subject,
        input_hash=digest(entry),
        input_ref=",".join(fields),
        outcome=change,
    )


def scheduled(
    recorded: datetime, source: Source, patient: str, found: tuple[Finding, ...], at: datetime
) -> AuditEntry:
    return _entry(
        recorded,
        source,
        at,
        kind="scheduled",
        subject=patient,
        input_hash=digest({"until": at.isoformat(), "patient": patient}),
        input_ref="monitoring_alert",
        outcome="flagged",
        warnings=_codes(found),
    )


def task_change(
    recorded: datetime, source: Source, task: dict[str, Any], at: datetime
) -> AuditEntry:
    """A task opened or closed (docs/contracts.md §7): its id, kind and status, never values."""
    return _entry(
        recorded,
        source,
        at,
        kind="task",
        subject=task["patient_id"],
        input_hash=digest({"task": task["id"], "key": task["key"], "status": task["status"]}),
        input_ref=f"monitoring_task/{task['id']}",
        outcome=task["status"],
        reasons=(task["kind"],),
    )


def review(
    recorded: datetime,
    source: Source,
    at: datetime,
    item_ids: list[str],
    outcome: str,
    subject: str | None = None,
    findings: tuple[str, ...] = (),
) -> AuditEntry:
    """The review queue: items held, linked, discarded or purged (their ids, never values)."""
    return _entry(
        recorded,
        source,
        at,
        kind="review",
        subject=subject,
        input_hash=digest(sorted(item_ids)),
        input_ref=",".join(f"review/{i}" for i in item_ids),
        outcome=outcome,
        warnings=findings,
    )


def rda_change(
    recorded: datetime,
    source: Source,
    issued: IssuedRda,
    state: RdaState,
    at: datetime,
    why: str,
) -> AuditEntry:
    """An RDA left `issued`: dispensed, voided or expired (its number, never the patient's)."""
    change = {"rda": issued.rda.number, "from": issued.state.value, "to": state.value, "why": why}
    return _entry(
        recorded,
        source,
        at,
        kind="rda",
        subject=issued.rda.patient or None,
        input_hash=digest(change),
        input_ref=f"rda/{issued.rda.number}",
        outcome=state.value,
    )


def dispense_record(
    recorded: datetime,
    source: Source,
    record_id: str,
    patient: str | None,
    content_hash: str,
    at: datetime,
    filed: DispenseFiled,
) -> AuditEntry:
    """A dispense a pharmacy reported: recorded or refused, with its findings' codes."""
    return _entry(
        recorded,
        source,
        at,
        kind="dispense_record",
        subject=patient,
        input_hash=content_hash,
        input_ref=f"dispense_record/{record_id}",
        outcome=filed.outcome.value,
        reasons=_codes(filed.reasons),
        warnings=_codes(filed.warnings),
    )


def cds_feedback(
    recorded: datetime, source: Source, feedback: dict[str, Any], card: dict[str, Any]
) -> AuditEntry:
    """A user's outcome on a CDS card (docs/contracts.md §6): the card (uuid, hook instance) and
    the PSF draft it filled as pointers, the outcome and its reason code; the comment by hash."""
    held = {k: v for k, v in feedback.items() if k != "comment"}
    refs = [f"cds_card/{card['uuid']}"]
    if feedback["draft"]:
        refs.append(f"QuestionnaireResponse/{feedback['draft']}")
    return _entry(
        recorded,
        source,
        feedback["outcome_timestamp"],
        kind="cds-feedback",
        subject=card["patient_id"],
        input_hash=digest(
            {**held, "comment": digest(feedback["comment"]), "hook": card["hook_instance"]}
        ),
        input_ref=",".join(refs),
        outcome=feedback["outcome"],
        reasons=(feedback["override_reason"],) if feedback["override_reason"] else (),
    )


def lookup(
    recorded: datetime,
    source: Source,
    at: datetime,
    query: Any,
    found: list[str],
    kind: str = "lookup",
    outcome: str | None = None,
    checked: Any = None,
) -> AuditEntry:
    """A certification lookup or a shipment check (docs/rules.md §10): who asked (the actor),
    the query by its hash, the resources found by id (never names); a check's pack and codes."""
    return _entry(
        recorded,
        source,
        at,
        kind=kind,
        subject=None,
        input_hash=digest(query),
        input_ref=",".join(found),
        outcome=outcome or ("found" if found else "none"),
        rule_pack=checked.rule_pack if checked is not None else "",
        rule_pack_version=checked.rule_pack_version if checked is not None else "",
        reasons=_codes(checked.reasons) if checked is not None else (),
        warnings=_codes(checked.warnings) if checked is not None else (),
    )


def access(recorded: datetime, source: Source, page: str, patient: str | None) -> AuditEntry:
    """An operator viewed a patient's data on the console (docs/contracts.md §8): who (the
    actor), which patient (the subject) and which page (its path, ids only), never what it
    showed."""
    return _entry(
        recorded,
        source,
        recorded,
        kind="access",
        subject=patient,
        input_hash=digest({"page": page, "patient": patient}),
        input_ref=page,
        outcome="viewed",
    )
