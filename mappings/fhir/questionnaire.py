"""The Patient Status Form as FHIR: our Questionnaires (data: questionnaires.json) and a
QuestionnaireResponse → PatientStatusForm (docs/rules.md §4–5, docs/contracts.md §5).

A response is checked against its Questionnaire's items (linkIds, answer types, answer options,
required answers); every problem names the element by a FHIRPath expression and never echoes a
value. Who submitted it is `author`: a Practitioner by NPI, or a designee by an identifier of
system ``DESIGNEE_SYSTEM``; the `submitter` items may say the same (they must agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from functools import cache
from importlib import resources
from typing import Any

from mappings.fhir.observation import quantity_text
from mappings.fhir.outcome import Issue
from mappings.fhir.references import NPI_SYSTEM, SubjectRef, subject_ref, token
from rems_core.model import (
    Designation,
    MonitoringFrequency,
    PatientStatusForm,
    PsfType,
    Rationale,
    ReportedAnc,
    SubmitterRole,
    TreatmentStatus,
)

DESIGNEE_SYSTEM = "urn:rems-gateway:designee"  # a designee's id, as the registry knows it
TYPE = "QuestionnaireResponse"
ROOT = TYPE
SUBMITTED = ("completed", "amended")
#: Earlier versions of our Questionnaires whose responses are read the same (version 2 of the
#: PSF only added read-only items the gateway fills in its drafts).
ALSO_READ = {"clozapine-psf": ("1",)}

# Questionnaire item type → the answer's value[x] it takes.
VALUE_OF = {
    "string": "valueString",
    "text": "valueString",
    "date": "valueDate",
    "dateTime": "valueDateTime",
    "decimal": "valueDecimal",
    "quantity": "valueQuantity",
    "boolean": "valueBoolean",
    "choice": "valueCoding",
    "open-choice": "valueCoding",
}


@cache
def questionnaires() -> dict[str, dict[str, Any]]:
    """Our Questionnaires by id."""
    text = resources.files("mappings.fhir").joinpath("questionnaires.json").read_text("utf-8")
    return {q["id"]: q for q in json.loads(text)}


def questionnaire_id(canonical: str | None) -> str | None:
    """The id of our Questionnaire a canonical names: its url, `Questionnaire/{id}` or any base
    followed by that, with an optional `|version` that must be ours."""
    if not canonical:
        return None
    url, _, version = canonical.partition("|")
    for qid, questionnaire in questionnaires().items():
        named = url == questionnaire["url"] or url.rstrip("/").endswith(f"Questionnaire/{qid}")
        if named and version in ("", questionnaire["version"], *ALSO_READ.get(qid, ())):
            return qid
    return None


@dataclass(frozen=True)
class Submitter:
    id: str  # NPI or designee id
    role: SubmitterRole


@dataclass(frozen=True)
class Answer:
    value: Any  # a code (choice), str, date, datetime, Decimal, bool or a Quantity model
    path: str


@dataclass
class Answers:
    """One level of a response: question answers and group instances, by linkId."""

    path: str
    values: dict[str, list[Answer]] = field(default_factory=dict)
    groups: dict[str, list[Answers]] = field(default_factory=dict)

    def one(self, link_id: str) -> Any:
        found = self.values.get(link_id)
        return found[0].value if found else None

    def all(self, link_id: str) -> list[Any]:
        return [a.value for a in self.values.get(link_id, [])]


@dataclass
class PsfReading:
    """What a QuestionnaireResponse says, and what was wrong with it."""

    questionnaire: str | None = None
    subject: SubjectRef | None = None
    identifier: str | None = None  # business identifier "system|value"
    form: PatientStatusForm | None = None
    signature: bool | None = None  # the `signature` answer: None when not answered
    problems: list[Issue] = field(default_factory=list)


def _issue(code: str, text: str, path: str) -> Issue:
    return Issue("error", code, text, (path,))


def read_response(response: Any, now: datetime, tz: tzinfo) -> PsfReading:
    """``response`` is a validated R4B QuestionnaireResponse; ``now`` is the submission time
    when `authored` is absent; bare dates are midnight in ``tz``."""
    reading = PsfReading()
    reading.questionnaire = questionnaire_id(response.questionnaire)
    if reading.questionnaire is None:
        known = ", ".join(q["url"] for q in questionnaires().values())
        reading.problems.append(
            _issue(
                "not-found", f"questionnaire must be one of ours: {known}", f"{ROOT}.questionnaire"
            )
        )
        return reading
    if response.status not in SUBMITTED:
        reading.problems.append(
            _issue("value", "status must be completed or amended to submit", f"{ROOT}.status")
        )
    reading.subject = subject_ref(response.subject)
    if reading.subject is None:
        text = "subject must be a Patient: a logical reference by identifier or Patient/{id}"
        reading.problems.append(_issue("required", text, f"{ROOT}.subject"))
    if response.identifier is not None and response.identifier.value:
        reading.identifier = token(response.identifier.system, response.identifier.value)
    definition = questionnaires()[reading.questionnaire]
    answers = collect(response.item, definition["item"], ROOT, reading.problems)
    submitter = _submitter(response, answers, reading.problems)
    reading.signature = answers.one("signature")
    if reading.problems or submitter is None:
        return reading
    submitted = _moment(response.authored, tz) if response.authored else now
    reading.form = to_form(answers, submitter, submitted, tz)
    return reading


def collect(
    items: Any, definitions: list[dict[str, Any]], path: str, problems: list[Issue]
) -> Answers:
    """The answers of ``items`` (response items at ``path``) to the ``definitions``."""
    known = {d["linkId"]: d for d in definitions}
    found = Answers(path)
    for index, item in enumerate(items or []):
        where = f"{path}.item[{index}]"
        definition = known.get(item.linkId)
        if definition is None:
            problems.append(_issue("invalid", "linkId is not an item of this Questionnaire", where))
        elif _seen(found, item.linkId) and not definition.get("repeats"):
            problems.append(_issue("invalid", f"{item.linkId} does not repeat", where))
        elif definition["type"] == "group":
            group = collect(item.item, definition.get("item", []), where, problems)
            found.groups.setdefault(item.linkId, []).append(group)
        else:
            found.values[item.linkId] = _answers(item, definition, where, problems)
    for definition in definitions:
        _unanswered(found, definition, problems)
    return found


def _seen(found: Answers, link_id: str) -> bool:
    """Answered: a value given, or a group present (an item with no answer counts as absent)."""
    return bool(found.values.get(link_id)) or link_id in found.groups


def _answers(
    item: Any, definition: dict[str, Any], where: str, problems: list[Issue]
) -> list[Answer]:
    answers = item.answer or []
    if len(answers) > 1 and not definition.get("repeats"):
        problems.append(_issue("invalid", f"{item.linkId} takes one answer", where))
        return []
    typed = (_typed(a, definition, f"{where}.answer[{n}]", problems) for n, a in enumerate(answers))
    return [a for a in typed if a is not None]


def _typed(
    answer: Any, definition: dict[str, Any], where: str, problems: list[Issue]
) -> Answer | None:
    kind = definition["type"]
    value = getattr(answer, VALUE_OF[kind])
    if value is None and kind == "open-choice" and answer.valueString is not None:
        return Answer(str(answer.valueString), f"{where}.valueString")
    if value is None:
        problems.append(_issue("value", f"{definition['linkId']} takes a {VALUE_OF[kind]}", where))
        return None
    if kind in ("choice", "open-choice"):
        return _option(value, definition, f"{where}.valueCoding", problems)
    return Answer(value, f"{where}.{VALUE_OF[kind]}")


def _option(
    coding: Any, definition: dict[str, Any], where: str, problems: list[Issue]
) -> Answer | None:
    for option in definition.get("answerOption", []):
        known = option["valueCoding"]
        if coding.code == known["code"] and coding.system in (None, known["system"]):
            return Answer(known["code"], where)
    codes = ", ".join(o["valueCoding"]["code"] for o in definition.get("answerOption", []))
    problems.append(
        _issue("code-invalid", f"{definition['linkId']} must be one of: {codes}", where)
    )
    return None


def _unanswered(found: Answers, definition: dict[str, Any], problems: list[Issue]) -> None:
    """An unanswered question takes its `initial` value; a required one must be answered."""
    link_id = definition["linkId"]
    if _seen(found, link_id):
        return
    initial = definition.get("initial")
    if initial:
        value = initial[0].get("valueCoding", {}).get("code") or initial[0].get("valueString")
        found.values[link_id] = [Answer(value, found.path)]
    elif definition.get("required"):
        where = f"{found.path}.item.where(linkId='{link_id}')"
        problems.append(
            _issue("required", f"{definition['text']} ({link_id}) needs an answer", where)
        )


def _submitter(response: Any, answers: Answers, problems: list[Issue]) -> Submitter | None:
    by_author = author(response.author, response.contained)
    groups = answers.groups.get("submitter", [])
    by_items = None
    if groups:
        role = groups[0].one("submitter.role")
        by_items = Submitter(groups[0].one("submitter.id"), SubmitterRole(role)) if role else None
    if response.author is not None and by_author is None:
        text = (
            f"author must be a Practitioner by NPI ({NPI_SYSTEM}) or a designee ({DESIGNEE_SYSTEM})"
        )
        problems.append(_issue("value", text, f"{ROOT}.author"))
        return None
    if by_author and by_items and by_author != by_items:
        text = "the submitter items name someone else than author"
        problems.append(_issue("invalid", text, groups[0].path))
        return None
    if by_author is None and by_items is None and not groups:
        text = "author (or the submitter items) must name who submits the form"
        problems.append(_issue("required", text, f"{ROOT}.author"))
    return by_author or by_items


def author(reference: Any, contained: list[Any] | None = None) -> Submitter | None:
    """A Practitioner by NPI, or a designee by its identifier; logical or contained (`#id`)."""
    if reference is None:
        return None
    identifiers = [reference.identifier] if reference.identifier is not None else []
    literal = reference.reference or ""
    if literal.startswith("#"):
        for resource in contained or []:
            if getattr(resource, "id", None) == literal[1:]:
                identifiers += getattr(resource, "identifier", None) or []
    for identifier in identifiers:
        if identifier.value and identifier.system == NPI_SYSTEM:
            return Submitter(str(identifier.value), SubmitterRole.PRESCRIBER)
        if identifier.value and identifier.system == DESIGNEE_SYSTEM:
            return Submitter(str(identifier.value), SubmitterRole.DESIGNEE)
    return None


def _moment(value: date | datetime, tz: tzinfo) -> datetime:
    """A dateTime answer in UTC: a bare date is midnight, a time without offset is local."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(), tz)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def to_form(
    answers: Answers, submitter: Submitter, submitted: datetime, tz: tzinfo
) -> PatientStatusForm:
    designation = answers.one("designation")
    frequency = answers.one("monitoring-frequency")
    prescriber = answers.one("prescriber-npi")
    if prescriber is None:
        prescriber = submitter.id if submitter.role == SubmitterRole.PRESCRIBER else ""
    return PatientStatusForm(
        type=PsfType(answers.one("type")),
        submitted_at=submitted,
        submitter=submitter.id,
        role=submitter.role,
        prescriber_npi=prescriber,
        designation=Designation(designation) if designation else None,
        treatment_status=TreatmentStatus(answers.one("treatment-status") or "active"),
        status_effective=answers.one("status-effective"),
        monitoring_frequency=MonitoringFrequency(frequency) if frequency else None,
        anc=tuple(_reported_anc(group, tz) for group in answers.groups.get("anc", [])),
        missed_draws=tuple(answers.all("missed-draws")),
        justification=answers.one("justification") or "",
        rationale=_rationale(answers.groups.get("rationale", [])),
    )


def _reported_anc(group: Answers, tz: tzinfo) -> ReportedAnc:
    value, unit = quantity_text(group.one("anc.value"))
    return ReportedAnc(value, unit, _moment(group.one("anc.drawn"), tz), group.one("anc.code"))


def _rationale(groups: list[Answers]) -> Rationale | None:
    if not groups:
        return None
    return Rationale(groups[0].one("rationale.reason") or "", groups[0].one("rationale.text") or "")
