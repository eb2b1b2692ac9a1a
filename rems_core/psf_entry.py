"""§5.7 double entry (docs/rule-decisions.md): a PSF that repeats one already on file, or that
says something else about a period an accepted PSF already reports.

Two PSFs of one patient are about the **same period** when they are of the same type and report
an ANC of the same code drawn on the same (site-local) day — or, reporting none, were submitted
on the same day. Weekly forms report different draws: they never overlap one another. The
**same content** is everything a PSF says apart from who submitted or signed it and when: type,
prescriber, designation, treatment status and its date, monitoring frequency, the ANCs (the same
result, §5.3: code, draw time and value per µL), missed draws, justification and rationale.

- The same content for the same period (accepted or waiting for a signature): a **repeat** — it
  is answered with the PSF on file and changes nothing (`PSF_REPEATED`).
- Different content for a period an accepted PSF reports: a **conflict** — held for the
  prescriber's signature with `PSF_CONFLICT` (both stay visible); signed by the certified
  prescriber, it is the prescriber's correction: accepted, with `PSF_CONFLICT` as a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, tzinfo
from enum import StrEnum
from typing import Any

from rems_core import monitoring
from rems_core.anc import same_result
from rems_core.codes import Code, finding
from rems_core.model import LabResult, PatientStatusForm, PsfStatus, StoredPsf
from rems_core.psf import PsfJudgement
from rems_core.rulepack import RulePack


class Entry(StrEnum):
    NEW = "new"
    REPEAT = "repeat"
    CONFLICT = "conflict"


def _draws(form: PatientStatusForm, tz: tzinfo) -> set[tuple[str, date]]:
    return {(a.code, monitoring.local_date(a.drawn, tz)) for a in form.anc}


def same_period(a: PatientStatusForm, b: PatientStatusForm, tz: tzinfo) -> bool:
    if a.type != b.type:
        return False
    draws_a, draws_b = _draws(a, tz), _draws(b, tz)
    if draws_a or draws_b:
        return bool(draws_a & draws_b)
    day = monitoring.local_date
    return day(a.submitted_at, tz) == day(b.submitted_at, tz)


def _said(form: PatientStatusForm) -> tuple[Any, ...]:
    """What the form says, apart from its ANCs and who submitted or signed it when."""
    return (
        form.type,
        form.prescriber_npi,
        form.designation,
        form.treatment_status,
        form.status_effective,
        form.monitoring_frequency,
        frozenset(form.missed_draws),
        form.justification.strip(),
        form.rationale,
    )


def _results(form: PatientStatusForm) -> list[LabResult]:
    return [LabResult(a.code, a.value, a.unit, a.drawn) for a in form.anc]


def same_content(pack: RulePack, a: PatientStatusForm, b: PatientStatusForm) -> bool:
    if _said(a) != _said(b) or len(a.anc) != len(b.anc):
        return False
    theirs = _results(b)
    return all(any(same_result(pack, mine, other) for other in theirs) for mine in _results(a))


def entry_of(
    pack: RulePack, form: PatientStatusForm, earlier: Sequence[StoredPsf], tz: tzinfo
) -> tuple[Entry, StoredPsf | None]:
    """Whether ``form`` repeats a PSF on file, conflicts with an accepted one, or is new."""
    overlapping = [
        p for p in earlier if p.status != PsfStatus.REJECTED and same_period(p.form, form, tz)
    ]
    for held in overlapping:
        if same_content(pack, held.form, form):
            return Entry.REPEAT, held
    accepted = [p for p in overlapping if p.status == PsfStatus.ACCEPTED]
    if accepted:
        return Entry.CONFLICT, max(accepted, key=lambda p: p.judged_at)
    return Entry.NEW, None


def repeated(held: StoredPsf, tz: tzinfo) -> Any:
    return finding(
        Code.PSF_REPEATED,
        type=held.form.type.value,
        recorded=monitoring.local_date(held.form.submitted_at, tz).isoformat(),
        psf=held.psf_id,
    )


def with_conflict(
    judgement: PsfJudgement, accepted: StoredPsf, signed: bool, tz: tzinfo
) -> PsfJudgement:
    """A conflicting PSF the rules would accept waits for the prescriber, unless the certified
    prescriber signed it (a correction: accepted, the conflict said as a warning)."""
    conflict = finding(
        Code.PSF_CONFLICT,
        type=accepted.form.type.value,
        accepted=monitoring.local_date(accepted.judged_at, tz).isoformat(),
        psf=accepted.psf_id,
    )
    if judgement.status == PsfStatus.REJECTED:
        return judgement
    if signed and judgement.status == PsfStatus.ACCEPTED:
        return PsfJudgement(judgement.status, judgement.reasons, (*judgement.warnings, conflict))
    return PsfJudgement(
        PsfStatus.PENDING_PRESCRIBER_SIGNATURE,
        (conflict, *judgement.reasons),
        judgement.warnings,
    )
