"""docs/rules.md §5.7 double entry: which PSFs are about the same period, which say the same, and
what a repeat or a conflict becomes (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from zoneinfo import ZoneInfo

from rems_core.codes import Code
from rems_core.model import (
    MonitoringFrequency,
    PsfStatus,
    PsfType,
    ReportedAnc,
    StoredPsf,
    SubmitterRole,
)
from rems_core.psf import PsfJudgement
from rems_core.psf_entry import Entry, entry_of, same_content, same_period, with_conflict
from tests.builders import DESIGNEE, REMS, at
from tests.test_psf import form

MARCH = ReportedAnc("2300", "/uL", at("2022-03-27T08:00"))


def monthly(submitted: str = "2022-03-28", **fields: object) -> object:
    defaults = {"anc": (MARCH,), "monitoring_frequency": MonitoringFrequency.MONTHLY}
    return form(submitted, **(defaults | fields))


def on_file(psf_form: object, status: PsfStatus = PsfStatus.ACCEPTED) -> StoredPsf:
    return StoredPsf("psf-1", psf_form, status, psf_form.submitted_at)  # type: ignore[arg-type]


def test_forms_reporting_the_same_draw_day_are_the_same_period_weekly_ones_are_not() -> None:
    first = monthly()
    same_day = replace(MARCH, drawn=at("2022-03-27T15:00"))
    assert same_period(first, monthly("2022-03-29", anc=(same_day,)), UTC)
    next_week = ReportedAnc("2300", "/uL", at("2022-04-03T08:00"))
    assert not same_period(first, monthly("2022-04-04", anc=(next_week,)), UTC)
    assert not same_period(first, monthly(type=PsfType.STATUS_CHANGE), UTC)
    # the draw day is the site's: 23:30 in New York is the next day in UTC
    late = ReportedAnc("2300", "/uL", at("2022-03-28T03:30"))
    assert not same_period(first, monthly(anc=(late,)), UTC)
    assert same_period(first, monthly(anc=(late,)), ZoneInfo("America/New_York"))


def test_without_ancs_forms_of_one_submission_day_are_the_same_period() -> None:
    assert same_period(monthly(anc=()), monthly("2022-03-28T18:00", anc=()), UTC)
    assert not same_period(monthly(anc=()), monthly("2022-03-29", anc=()), UTC)


def test_the_same_content_is_what_the_form_says_not_who_sent_it_or_how_the_value_is_written() -> (
    None
):
    designee = monthly(
        "2022-03-29",
        submitter=DESIGNEE,
        role=SubmitterRole.DESIGNEE,
        anc=(ReportedAnc("2.3", "10*3/uL", MARCH.drawn),),
    )
    assert same_content(REMS, monthly(signed=True), designee)
    weekly = monthly(monitoring_frequency=MonitoringFrequency.WEEKLY)
    assert not same_content(REMS, monthly(), weekly)
    other_value = monthly(anc=(replace(MARCH, value="2400"),))
    assert not same_content(REMS, monthly(), other_value)


def test_a_repeat_a_conflict_and_a_new_period() -> None:
    accepted = on_file(monthly())
    assert entry_of(REMS, monthly("2022-03-29"), [accepted], UTC) == (Entry.REPEAT, accepted)
    weekly = monthly("2022-03-29", monitoring_frequency=MonitoringFrequency.WEEKLY)
    assert entry_of(REMS, weekly, [accepted], UTC) == (Entry.CONFLICT, accepted)
    april = monthly("2022-04-27", anc=(ReportedAnc("2200", "/uL", at("2022-04-26T08:00")),))
    assert entry_of(REMS, april, [accepted], UTC) == (Entry.NEW, None)
    # a rejected form is not on file; one waiting for a signature is repeated, not conflicted
    assert entry_of(REMS, weekly, [on_file(monthly(), PsfStatus.REJECTED)], UTC)[0] == Entry.NEW
    assert (
        entry_of(REMS, weekly, [on_file(monthly(), PsfStatus.PENDING_PRESCRIBER_SIGNATURE)], UTC)[0]
        == Entry.NEW
    )


def test_a_conflict_waits_for_the_prescriber_unless_the_prescriber_signed_it() -> None:
    accepted = on_file(monthly())
    would_accept = PsfJudgement(PsfStatus.ACCEPTED, (), ())
    held = with_conflict(would_accept, accepted, signed=False, tz=UTC)
    assert held.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE
    assert [r.code for r in held.reasons] == [Code.PSF_CONFLICT]
    assert "psf-1" in held.reasons[0].text
    corrected = with_conflict(would_accept, accepted, signed=True, tz=UTC)
    assert corrected.status == PsfStatus.ACCEPTED
    assert [w.code for w in corrected.warnings] == [Code.PSF_CONFLICT]
    rejected = PsfJudgement(PsfStatus.REJECTED, (), ())
    assert with_conflict(rejected, accepted, signed=False, tz=UTC) is rejected
