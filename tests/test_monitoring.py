"""docs/rules.md §3 monitoring frequency, overdue, labs missed; §4 legacy enrollment; §7 status."""

from __future__ import annotations

from datetime import UTC, date
from zoneinfo import ZoneInfo

import pytest

from rems_core import monitoring
from rems_core.model import MonitoringFrequency, TreatmentStatus
from tests.builders import REMS, anc, at, patient_file, psf

WEEKLY, BIWEEKLY, MONTHLY, THRICE = (
    MonitoringFrequency.WEEKLY,
    MonitoringFrequency.EVERY_2_WEEKS,
    MonitoringFrequency.MONTHLY,
    MonitoringFrequency.THREE_TIMES_WEEKLY,
)


@pytest.mark.parametrize(
    ("on", "frequency"),
    [
        (date(2022, 1, 1), WEEKLY),
        (date(2022, 6, 30), WEEKLY),
        (date(2022, 7, 1), BIWEEKLY),
        (date(2022, 12, 31), BIWEEKLY),
        (date(2023, 1, 1), MONTHLY),
    ],
)
def test_phase_schedule_counts_calendar_months_from_the_anchor(
    on: date, frequency: MonitoringFrequency
) -> None:
    assert monitoring.phase_frequency(REMS, date(2022, 1, 1), on) == frequency


def test_add_months_clamps_to_the_end_of_a_short_month() -> None:
    assert monitoring.add_months(date(2022, 8, 31), 6) == date(2023, 2, 28)


@pytest.mark.parametrize(("gap_days", "resets"), [(29, False), (30, True)])
def test_an_interruption_of_30_days_or_more_resets_the_phase_anchor(
    gap_days: int, resets: bool
) -> None:
    stop = psf("2022-03-01", treatment_status=TreatmentStatus.INTERRUPTED)
    resume_on = date(2022, 3, 1).toordinal() + gap_days
    resume = psf(date.fromordinal(resume_on).isoformat(), treatment_status=TreatmentStatus.ACTIVE)
    snapshot = patient_file(psfs=(stop, resume))
    anchor = monitoring.phase_anchor(REMS, snapshot, at("2022-06-01"), UTC)
    assert (anchor == date.fromordinal(resume_on)) is resets


def test_a_mild_anc_makes_three_times_weekly_the_recommendation() -> None:
    snapshot = patient_file(ancs=(anc("1200", "2022-03-01"),))
    assert monitoring.recommended_frequency(REMS, snapshot, at("2022-03-02"), UTC) == THRICE


def test_the_reported_frequency_is_the_latest_accepted_psfs() -> None:
    snapshot = patient_file(psfs=(psf("2022-02-01", monitoring_frequency=BIWEEKLY),))
    assert monitoring.reported_frequency(REMS, snapshot, at("2022-02-02"), UTC) == BIWEEKLY


@pytest.mark.parametrize(("evaluated", "missed"), [("2022-02-27", False), ("2022-02-28", True)])
def test_labs_are_missed_after_more_than_30_calendar_days(evaluated: str, missed: bool) -> None:
    snapshot = patient_file(ancs=(anc("2000", "2022-01-28"),))
    assert monitoring.labs_missed(REMS, snapshot, at(evaluated), UTC) is missed


def test_day_counts_use_the_site_time_zone() -> None:
    # Drawn 2022-01-29 03:00 UTC is 2022-01-28 in New York: evaluated 02-28 is 31 days there.
    snapshot = patient_file(ancs=(anc("2000", "2022-01-29T03:00"),))
    evaluated = at("2022-02-28T15:00")
    assert monitoring.labs_missed(REMS, snapshot, evaluated, ZoneInfo("America/New_York"))
    assert not monitoring.labs_missed(REMS, snapshot, evaluated, UTC)


@pytest.mark.parametrize(("age_days", "overdue"), [(14, False), (15, True)])
def test_overdue_uses_the_stricter_of_reported_and_recommended(
    age_days: int, overdue: bool
) -> None:
    reported = psf("2021-12-01", monitoring_frequency=MONTHLY)
    snapshot = patient_file(
        psfs=(reported,), treatment_start=date(2021, 3, 1), ancs=(anc("2000", "2022-01-01"),)
    )
    evaluated = date(2022, 1, 1).toordinal() + age_days
    moment = at(date.fromordinal(evaluated).isoformat())
    assert monitoring.is_overdue(REMS, snapshot, moment, UTC) is overdue


def test_a_legacy_patient_is_enrolled_through_the_deadline_day() -> None:
    snapshot = patient_file(enrolled_on=None, legacy=True)
    assert monitoring.is_enrolled(REMS, snapshot, at("2021-12-22T23:00"), UTC)
    assert not monitoring.is_enrolled(REMS, snapshot, at("2021-12-23T00:30"), UTC)


def test_treatment_status_follows_the_latest_accepted_psf() -> None:
    snapshot = patient_file(
        psfs=(psf("2022-02-01", treatment_status=TreatmentStatus.DISCONTINUED),)
    )
    status, _ = monitoring.treatment_status(REMS, snapshot, at("2022-02-02"), UTC)
    assert status == TreatmentStatus.DISCONTINUED
    status, _ = monitoring.treatment_status(
        REMS, patient_file(enrolled_on=None), at("2022-02-02"), UTC
    )
    assert status == TreatmentStatus.NOT_ENROLLED


def test_the_reported_frequency_is_the_newest_stated_one() -> None:
    older = psf("2022-01-01", monitoring_frequency=MONTHLY)
    newer = psf("2022-02-01", monitoring_frequency=BIWEEKLY)
    snapshot = patient_file(psfs=(newer, older))
    assert monitoring.reported_frequency(REMS, snapshot, at("2022-02-02"), UTC) == BIWEEKLY
