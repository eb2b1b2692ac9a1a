"""§4 the registry block (docs/contracts.md §2) as it is loaded: prescribers, designees, pharmacies,
patients. Schema-checked; an unknown key or a bad NPI is an error, not a guess."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from rems_core.model import Designation, MonitoringFrequency, Setting


def npi_is_valid(npi: str) -> bool:
    """10 digits whose last is the Luhn check digit of ``80840`` + the first nine."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed("80840" + npi[:9])):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return (10 - total % 10) % 10 == int(npi[9])


def _check_npi(npi: str) -> str:
    if not npi_is_valid(npi):
        raise ValueError(f"{npi!r} is not a valid NPI (10 digits with the Luhn check)")
    return npi


Npi = Annotated[str, AfterValidator(_check_npi)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class DesigneeEntry(_Strict):
    id: str
    name: str = ""


class PrescriberEntry(_Strict):
    npi: Npi
    name: str = ""
    certified: bool = False
    certified_on: date | None = None
    dea: str | None = None
    email: str | None = None
    designees: list[DesigneeEntry] = []


class EnrollmentEntry(_Strict):
    setting: Setting
    certified: bool = False
    certified_on: date | None = None
    recertify_by: date | None = None  # certified through this day (§10)


class PharmacyEntry(_Strict):
    npi: Npi
    name: str = ""
    ncpdp: str | None = None
    enrollments: list[EnrollmentEntry] = Field(default_factory=list, max_length=2)


class IdentifierEntry(_Strict):
    system: str
    value: str


class NameEntry(_Strict):
    family: str = ""
    given: str = ""


class AncEntry(_Strict):
    value: str
    unit: str
    drawn: datetime | date
    code: str = "751-8"


# --- wholesalers and distributors (§10) ------------------------------------------------------


class TradePartnerEntry(_Strict):
    """A wholesaler or distributor: ``id`` is the file's handle and the stable part of its
    FHIR id (``wholesaler-<id>``, ``distributor-<id>``)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,49}$")
    identifiers: list[IdentifierEntry] = []  # DEA, GLN, HIN, …
    name: str = ""
    enrolled_on: date | None = None
    certified: bool = False
    certified_on: date | None = None
    recertify_by: date | None = None


class PatientEnrollment(_Strict):
    by: str
    date: date
    anc: list[AncEntry] = []
    monitoring_frequency: MonitoringFrequency | None = None
    prescriber: str | None = None  # when ``by`` is a designee

    @field_validator("anc", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class PatientEntry(_Strict):
    id: str | None = None  # a handle used inside one file
    identifiers: list[IdentifierEntry] = Field(min_length=1)
    name: NameEntry = NameEntry()
    birth_date: date | None = None
    sex: str | None = None
    designation: Designation = Designation.GENERAL
    treatment_start: date | None = None
    legacy_enrolled: bool = False
    enrollment: PatientEnrollment | None = None


class RegistryDocument(_Strict):
    prescribers: list[PrescriberEntry] = []
    pharmacies: list[PharmacyEntry] = []
    patients: list[PatientEntry] = []
    wholesalers: list[TradePartnerEntry] = []
    distributors: list[TradePartnerEntry] = []

    def conflicts(self) -> list[str]:
        """One NPI, handle or identifier given two different records in one document."""
        problems = self._trade_partner_conflicts()
        for kind, entries, key in (
            ("prescriber", self.prescribers, lambda e: e.npi),
            ("pharmacy", self.pharmacies, lambda e: e.npi),
            ("wholesaler", self.wholesalers, lambda e: e.id),
            ("distributor", self.distributors, lambda e: e.id),
        ):
            seen: dict[str, Any] = {}
            for entry in entries:
                k = key(entry)
                if k in seen and seen[k] != entry:
                    problems.append(f"{kind} {k} appears twice with different fields")
                seen[k] = entry
        owners: dict[tuple[str, str], int] = {}
        for index, patient in enumerate(self.patients):
            for ident in patient.identifiers:
                other = owners.setdefault((ident.system, ident.value), index)
                if other != index and self.patients[other] != patient:
                    # The identifier's value is PHI: name the entries, not the value.
                    problems.append(
                        f"patients {other} and {index} share an identifier of {ident.system}"
                    )
        return problems

    def _trade_partner_conflicts(self) -> list[str]:
        owners: dict[tuple[str, str], str] = {}
        problems = []
        for kind, entries in (("wholesaler", self.wholesalers), ("distributor", self.distributors)):
            for entry in entries:
                for ident in entry.identifiers:
                    owner = owners.setdefault((ident.system, ident.value), f"{kind} {entry.id}")
                    if owner != f"{kind} {entry.id}":
                        problems.append(
                            f"{owner} and {kind} {entry.id} share an identifier of {ident.system}"
                        )
        return problems


class RegistryConflict(ValueError):
    """A registry load that contradicts itself or the registry; nothing of it is loaded."""


class RegistryInvalid(ValueError):
    """A registry block that does not fit the schema; messages name places, never values (PHI)."""

    def __init__(self, issues: list[dict[str, Any]]) -> None:
        self.issues = issues
        super().__init__(
            "; ".join(f"{'.'.join(map(str, i['loc'])) or 'registry'}: {i['msg']}" for i in issues)
        )


def registry_from(data: Any) -> RegistryDocument:
    """The registry block, bare or wrapped in ``registry:`` (as in a scenario file)."""
    block = data["registry"] if isinstance(data, dict) and "registry" in data else data
    try:
        return RegistryDocument.model_validate(block if block is not None else {})
    except ValidationError as exc:
        raise RegistryInvalid(
            [
                {
                    "loc": list(error["loc"]),
                    "msg": error["msg"].removeprefix("Value error, "),
                    "type": error["type"],
                }
                for error in exc.errors(include_input=False, include_url=False)
            ]
        ) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without quoting the document (it may hold names or identifiers)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    return f"not valid YAML{where}" + (f": {problem}" if problem else "")
