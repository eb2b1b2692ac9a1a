"""Scenario files are read strictly (docs/contracts.md §2): the `sender`, `pid`, `adt` and
`review` keys, each misuse an error naming the step (or `sender`) and the key — before anything
runs, with no database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.scenarios.file import ScenarioError, load

MRN = "urn:oid:2.16.840.1.113883.3.999.1"
REGISTRY = {
    "patients": [{"id": "P1", "identifiers": [{"system": MRN, "value": "MRN-KEYS-1"}]}],
}
AT = "2021-12-01T09:00:00Z"


def scenario(tmp_path: Path, *steps: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "keys.yaml"
    data = {"name": "keys", "registry": REGISTRY, "steps": list(steps), **top}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ScenarioError) as raised:
        load(path)
    return str(raised.value)


LAB = {"code": "751-8", "value": "2.1", "unit": "10*3/uL", "drawn": "2021-12-01T08:00:00Z"}


def test_a_well_formed_file_with_the_new_keys_loads(tmp_path: Path) -> None:
    loaded = load(
        scenario(
            tmp_path,
            {"at": AT, "adt": {"event": "A08", "pid": "MRN-KEYS-1^^^GH^MR~E-1^^^GHENT^PI"}},
            {"at": AT, "lab": {"pid": "E-1^^^GHENT^PI", **LAB}, "expect": {"held": 0}},
            {"at": AT, "review": {"link": "E-1^^^GHENT^PI", "to": "P1"}, "expect": {"filed": 0}},
            {"at": AT, "review": {"discard": "E-2", "reason": "test"}},
            sender={"application": "LAB", "facility": "GH", "default_authority": "GH"},
        )
    )
    assert [s.kind for s in loaded.steps] == ["adt", "lab", "review", "review"]
    assert loaded.has_sender and loaded.sender.application == "LAB"


def test_pid_with_patient_in_the_lab_is_an_error_naming_the_step(tmp_path: Path) -> None:
    lab = {"patient": "P1", "pid": "MRN-KEYS-1^^^GH^MR", **LAB}
    message = refused(scenario(tmp_path, {"at": AT, "lab": lab}))
    assert "step 1" in message and "pid" in message


def test_pid_with_the_steps_patient_is_an_error_naming_the_step(tmp_path: Path) -> None:
    step = {"at": AT, "patient": "P1", "lab": {"pid": "MRN-KEYS-1^^^GH^MR", **LAB}}
    message = refused(scenario(tmp_path, {"at": AT, "lab": LAB | {"patient": "P1"}}, step))
    assert "step 2" in message and "pid" in message


def test_pid_on_a_later_result_of_labs_is_an_error(tmp_path: Path) -> None:
    labs = [LAB | {"patient": "P1"}, LAB | {"pid": "E-1", "code": "26464-8"}]
    message = refused(scenario(tmp_path, {"at": AT, "labs": labs}))
    assert "step 1" in message and "pid" in message


@pytest.mark.parametrize(
    "review",
    [
        {"link": "P1", "to": "P1", "discard": "P1", "reason": "both"},
        {"to": "P1"},
        {},
    ],
    ids=["link-and-discard", "neither-with-to", "neither"],
)
def test_a_review_is_exactly_one_of_link_and_discard(
    tmp_path: Path, review: dict[str, Any]
) -> None:
    message = refused(scenario(tmp_path, {"at": AT, "review": review}))
    assert "step 1" in message and "link" in message and "discard" in message


def test_a_review_link_needs_to(tmp_path: Path) -> None:
    message = refused(scenario(tmp_path, {"at": AT, "review": {"link": "E-1^^^GHENT^PI"}}))
    assert "step 1" in message and "`to`" in message


def test_a_review_discard_needs_a_reason_and_takes_no_to(tmp_path: Path) -> None:
    assert "`reason`" in refused(scenario(tmp_path, {"at": AT, "review": {"discard": "E-1"}}))
    discard = {"discard": "E-1", "reason": "x", "to": "P1"}
    assert "to" in refused(scenario(tmp_path, {"at": AT, "review": discard}))


def test_an_adt_needs_a_pid(tmp_path: Path) -> None:
    message = refused(scenario(tmp_path, {"at": AT, "adt": {"event": "A01"}}))
    assert "step 1" in message and "`pid`" in message


def test_an_adt_pid_with_a_patient_is_an_error(tmp_path: Path) -> None:
    step = {"at": AT, "patient": "P1", "adt": {"event": "A01", "pid": "MRN-KEYS-1"}}
    message = refused(scenario(tmp_path, step))
    assert "step 1" in message and "pid" in message


def test_an_adt_event_is_ann(tmp_path: Path) -> None:
    message = refused(scenario(tmp_path, {"at": AT, "adt": {"event": "ZZ1", "pid": "X"}}))
    assert "step 1" in message and "event" in message


def test_an_unknown_key_inside_sender_is_an_error(tmp_path: Path) -> None:
    path = scenario(tmp_path, {"at": AT, "lab": LAB | {"patient": "P1"}}, sender={"facilty": "GH"})
    message = refused(path)
    assert message.startswith("sender") and "facilty" in message


def test_filed_is_not_an_expect_key_of_a_lab_step(tmp_path: Path) -> None:
    step = {"at": AT, "lab": LAB | {"patient": "P1"}, "expect": {"filed": 1}}
    message = refused(scenario(tmp_path, step))
    assert "step 1" in message and "filed" in message


@pytest.mark.parametrize("kind", ["hl7", "fhir"])
def test_filed_is_not_an_expect_key_of_raw_steps(tmp_path: Path, kind: str) -> None:
    body: Any = "MSH|^~\\&|A|B" if kind == "hl7" else {"resourceType": "Observation"}
    message = refused(scenario(tmp_path, {"at": AT, kind: body, "expect": {"filed": 0}}))
    assert "step 1" in message and "filed" in message


def test_cancel_and_dispensed_steps_read_the_order_they_name(tmp_path: Path) -> None:
    loaded = load(
        scenario(
            tmp_path,
            {"at": AT, "patient": "P1", "cancel": {"request_id": "RQ-1", "action": "discontinue"}},
            {"at": AT, "patient": "P1", "dispensed": {"request_id": "RQ-1", "days_supply": 14}},
        )
    )
    end, record = (s.request for s in loaded.steps)
    assert (end.request_id, str(end.action)) == ("RQ-1", "discontinue")
    assert (record.request_id, record.days_supply, record.quantity) == ("RQ-1", 14, 14)


@pytest.mark.parametrize(
    "step",
    [
        {"cancel": {}},
        {"cancel": {"request_id": "RQ-1", "action": "void"}},
        {"dispensed": {"request_id": "RQ-1", "rda": "RDA-1"}},
    ],
    ids=["cancel-without-request-id", "cancel-unknown-action", "dispensed-unknown-key"],
)
def test_a_cancel_or_dispensed_step_misread_is_an_error_naming_it(
    tmp_path: Path, step: dict[str, Any]
) -> None:
    message = refused(scenario(tmp_path, {"at": AT, "patient": "P1", **step}))
    (kind,) = step
    assert "step 1" in message and kind in message


PSF = {"patient": "P1", "by": "1234567893", "signed": True}


def test_tasks_draft_and_complete_draft_load_as_read(tmp_path: Path) -> None:
    draft = {"due": "2021-12-08", "ancs": 1, "rationale_needed": True, "versions": 2}
    loaded = load(
        scenario(
            tmp_path,
            {"at": AT, "advance_to": {"patient": "P1"}, "expect": {"tasks": [], "draft": "none"}},
            {
                "at": AT,
                "psf": PSF | {"complete_draft": True},
                "expect": {"tasks": ["psf-due", "anc-overdue"], "draft": draft},
            },
        )
    )
    first, second = loaded.steps
    assert first.expect == {"tasks": [], "draft": "none"} and not first.completes_draft
    assert second.completes_draft and second.expect["tasks"] == ["anc-overdue", "psf-due"]
    assert second.expect["draft"] == draft


@pytest.mark.parametrize(
    ("step", "named"),
    [
        ({"lab": LAB | {"patient": "P1"}, "expect": {"tasks": ["psf-late"]}}, "psf-late"),
        ({"lab": LAB | {"patient": "P1"}, "expect": {"tasks": "psf-due"}}, "tasks"),
        (
            {"advance_to": {"patient": "P1"}, "expect": {"draft": {"due_date": "2021-12-08"}}},
            "due_date",
        ),
        ({"advance_to": {"patient": "P1"}, "expect": {"draft": {"ancs": "two"}}}, "ancs"),
        ({"advance_to": {"patient": "P1"}, "expect": {"draft": "missing"}}, "draft"),
        ({"advance_to": True, "expect": {"tasks": []}}, "patient"),
        ({"lab": {"pid": "MRN-KEYS-1", **LAB}, "expect": {"draft": "none"}}, "patient"),
        ({"review": {"discard": "E-1", "reason": "x"}, "expect": {"tasks": []}}, "tasks"),
        ({"dispense": {"patient": "P1", "complete_draft": True}}, "complete_draft"),
        ({"psf": PSF | {"type": "enrollment", "complete_draft": True}}, "complete_draft"),
        ({"psf": PSF | {"complete_draft": "yes"}}, "complete_draft"),
    ],
    ids=[
        "unknown-task-kind",
        "tasks-not-a-list",
        "draft-unknown-key",
        "draft-count-not-a-number",
        "draft-neither-none-nor-a-mapping",
        "advance-to-without-patient",
        "lab-by-pid",
        "review-step",
        "complete-draft-on-a-dispense",
        "complete-draft-of-an-enrollment",
        "complete-draft-not-a-boolean",
    ],
)
def test_tasks_draft_and_complete_draft_misread_are_errors_naming_them(
    tmp_path: Path, step: dict[str, Any], named: str
) -> None:
    message = refused(scenario(tmp_path, {"at": AT, **step}))
    assert "step 1" in message and named in message
