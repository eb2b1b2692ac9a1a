"""Properties of the engine over generated patients and requests (bounded examples for CI)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappings.fhir.content import content_hash, content_hashes
from rems_core.anc import category_of, specimen_ancs
from rems_core.audit import digest, digest_of_plain
from rems_core.dispense import decide
from rems_core.model import (
    AncCategory,
    Designation,
    DispenseRequest,
    LabResult,
    MonitoringFrequency,
    Outcome,
    Override,
    Patient,
    PatientSnapshot,
    Pharmacy,
    PharmacyEnrollment,
    Rationale,
    ReportedAnc,
    ResultStatus,
    Setting,
    TreatmentStatus,
    to_plain,
)
from tests.builders import LABEL, PACKS, REMS, CountingIds, anc, prescribers, psf

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEVERITY = {
    AncCategory.NORMAL: 0,
    AncCategory.MILD: 1,
    AncCategory.BEN_NEUTROPENIA: 1,
    AncCategory.MODERATE: 2,
    AncCategory.SEVERE: 3,
}
START = datetime(2021, 11, 15, tzinfo=UTC)
designations = st.sampled_from(list(Designation))


@SETTINGS
@given(st.integers(0, 100_000), st.integers(0, 100_000), designations)
def test_category_is_monotone_in_anc(a: int, b: int, designation: Designation) -> None:
    low, high = sorted((a, b))
    low_category, _ = category_of(REMS, low, designation)
    high_category, _ = category_of(REMS, high, designation)
    assert SEVERITY[low_category] >= SEVERITY[high_category]


@SETTINGS
@given(st.decimals(min_value=Decimal("0.1"), max_value=Decimal("99"), places=3))
def test_unit_conversions_agree(thousands: Decimal) -> None:
    drawn = START
    spellings = [
        (str(thousands), "10*3/uL"),
        (str(thousands), "10*9/L"),
        (str(thousands * 1000), "/uL"),
        (str(thousands * 1000), "cells/mm3"),
        (str(thousands * 1000), "10*6/L"),
    ]
    values = {
        specimen_ancs(REMS, Designation.GENERAL, [LabResult("751-8", v, u, drawn)])[0].anc
        for v, u in spellings
    }
    assert len(values) == 1


def moments() -> st.SearchStrategy[datetime]:
    return st.integers(0, 3 * 365 * 24).map(lambda hours: START + timedelta(hours=hours))


@st.composite
def snapshots(draw: st.DrawFn, enrolled: bool | None = None) -> PatientSnapshot:
    designation = draw(designations)
    ancs = tuple(
        anc(
            str(draw(st.integers(0, 6000))),
            draw(moments()).strftime("%Y-%m-%dT%H:%M"),
            designation=designation,
        )
        for _ in range(draw(st.integers(0, 4)))
    )
    may_enroll = enrolled is not False
    psfs = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                ["enrollment", "monthly", "status_change"]
                if may_enroll
                else ["monthly", "status_change"]
            )
        )
        psfs.append(
            psf(
                draw(moments()).strftime("%Y-%m-%dT%H:%M"),
                psf_type=kind,
                treatment_status=draw(st.sampled_from(list(TreatmentStatus)[1:])),
                monitoring_frequency=draw(st.none() | st.sampled_from(list(MonitoringFrequency))),
                rationale=draw(st.none() | st.just(Rationale("benefit_outweighs_risk", "x"))),
            )
        )
    enrollments = tuple(
        PharmacyEnrollment(s, draw(st.booleans()))
        for s in draw(st.sets(st.sampled_from(list(Setting))))
    )
    return PatientSnapshot(
        patient=Patient(
            "RP-1",
            (),
            designation,
            draw(st.none() | st.just(date(2021, 1, 1))),
            legacy_enrolled=draw(st.booleans()) if may_enroll else False,
        ),
        anc_results=ancs,
        psfs=tuple(psfs),
        override_dates=tuple(draw(st.lists(moments(), max_size=4))),
        prescribers=prescribers(),
        pharmacies={"1588667638": Pharmacy("1588667638", enrollments=enrollments)},
    )


@st.composite
def requests(draw: st.DrawFn) -> DispenseRequest:
    override = draw(
        st.none()
        | st.builds(
            Override,
            st.sampled_from(["1234567893", ""]),
            st.builds(ReportedAnc, st.integers(0, 4000).map(str), st.just("/uL"), moments()),
            st.sampled_from(["PSF pending", ""]),
        )
    )
    return DispenseRequest(
        pharmacy_npi=draw(st.sampled_from(["1588667638", "1999999984"])),
        prescriber_npi=draw(st.sampled_from(["1234567893", "1245319599"])),
        setting=draw(st.sampled_from(list(Setting))),
        dispense_date=draw(moments()),
        days_supply=draw(st.integers(1, 90)),
        drug=draw(st.sampled_from(["197536", "2626", "161"])),
        discharge=draw(st.booleans()),
        override=override,
    )


@SETTINGS
@given(snapshots(enrolled=False), requests())
def test_the_strict_pack_never_authorizes_a_patient_who_is_not_enrolled(
    snapshot: PatientSnapshot, request: DispenseRequest
) -> None:
    decision = decide(REMS, request, snapshot, UTC, CountingIds())
    assert decision.outcome != Outcome.AUTHORIZED


@SETTINGS
@given(snapshots(), requests())
def test_the_label_pack_never_denies(snapshot: PatientSnapshot, request: DispenseRequest) -> None:
    decision = decide(LABEL, request, snapshot, UTC, CountingIds())
    assert decision.outcome in (Outcome.AUTHORIZED, Outcome.NOT_APPLICABLE)
    assert decision.rda is None


@SETTINGS
@given(
    snapshots(),
    requests(),
    st.sampled_from(
        ["clozapine-rems-2021", "clozapine-rems-2021+discretion", "clozapine-label-2025"]
    ),
)
def test_the_decision_is_deterministic(
    snapshot: PatientSnapshot, request: DispenseRequest, pack_id: str
) -> None:
    pack = PACKS.get(pack_id)
    first = decide(pack, request, snapshot, UTC, CountingIds())
    second = decide(pack, request, snapshot, UTC, CountingIds())
    assert first == second


@SETTINGS
@given(snapshots(), requests())
def test_an_authorization_carries_no_reason_but_the_override(
    snapshot: PatientSnapshot, request: DispenseRequest
) -> None:
    decision = decide(REMS, request, snapshot, UTC, CountingIds())
    if decision.outcome == Outcome.AUTHORIZED:
        assert {r.code for r in decision.reasons} <= {"PHARMACIST_OVERRIDE"}
        assert decision.rda is not None


@st.composite
def lab_results(draw: st.DrawFn) -> LabResult:
    return LabResult(
        draw(st.sampled_from(["751-8", "26499-4", "6690-2"])),
        draw(st.text(max_size=8)),
        draw(st.sampled_from(["10*3/uL", "/uL", "", "cells/µL"])),
        draw(moments()),
        draw(st.sampled_from(list(ResultStatus))),
        draw(st.none() | st.text(max_size=12)),
    )


@SETTINGS
@given(st.lists(lab_results(), max_size=6), snapshots())
def test_the_fast_input_digest_is_the_plain_one(
    results: list[LabResult], snapshot: PatientSnapshot
) -> None:
    """Audit input hashes must not change with how they are computed."""
    assert digest_of_plain(results) == digest(to_plain(results))
    assert digest_of_plain(snapshot) == digest(to_plain(snapshot))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@SETTINGS
@given(
    body=st.dictionaries(st.sampled_from(["id", "meta", "authored", "item", "µ", "Z", "a"]), _json),
    fewer=st.sets(st.sampled_from(["authored", "item", "µ"])),
)
def test_the_two_hashes_from_one_encoding_are_the_content_hashes(
    body: dict[str, object], fewer: set[str]
) -> None:
    whole, part = content_hashes(body, fewer)
    assert whole == content_hash(body)
    assert part == content_hash({k: v for k, v in body.items() if k not in fewer})
