"""Rule packs: the REMS parameters as schema-checked data, chosen by clinical date.

A pack file lists parameters as ``{value, unit, section}``. A derived pack ``extends`` another and
lists only what it changes (mappings merge key by key, everything else replaces). A site override
file derives a new version of one or more packs; every decision records that version.
"""

from __future__ import annotations

import hashlib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rems_core.model import AncCategory, MonitoringFrequency, Setting

PACK_DIR = Path(__file__).parent / "packs"
AUTO = "auto"
DEFAULT_PACK = "clozapine-rems-2021"

T = TypeVar("T")


class RulePackError(ValueError):
    """A pack file that does not load, or an unknown pack id."""


class OutOfScope(ValueError):
    """No rule pack covers the event's clinical date."""

    code = "NO_RULE_PACK_FOR_DATE"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Param(_Strict, Generic[T]):
    value: T
    unit: str | None = None
    section: str


class CategoryBand(_Strict):
    category: AncCategory
    from_: int = Field(alias="from")
    frequency: MonitoringFrequency | None
    advice: str


class SuspectBound(_Strict):
    unit_factor: Decimal
    below: Decimal | None = None
    above: Decimal | None = None


class LoincRoles(_Strict):
    anc: list[str]
    wbc: list[str]
    neutrophils_pct: list[str]
    segmented_pct: list[str]
    bands_pct: list[str]


class AnalyteOfCode(_Strict):
    anc: str
    wbc: str
    neutrophils_pct: str
    segmented_pct: str
    bands_pct: str


class PhaseStep(_Strict):
    before_month: int | None
    frequency: MonitoringFrequency


class OverrideLimit(_Strict):
    per_patient: int
    window_days: int
    settings: list[Setting]


class DischargeCap(_Strict):
    inpatient_only: int
    by_monitoring_frequency_from: date | None = None
    by_monitoring_frequency: dict[MonitoringFrequency, int]


class AncRange(_Strict):
    min: int
    max: int


class ByDesignation(_Strict):
    general: int
    ben: int
    hospice: int


class RulePack(_Strict):
    id: str
    version: str
    title: str
    use_for: str
    extends: str | None = None
    mode: Param[Literal["enforce", "advisory"]]
    administrative_failures: Param[Literal["deny", "warn"]]
    anc_categories: Param[dict[str, list[CategoryBand]]]
    rationale_below: Param[ByDesignation]
    initiation_below: Param[ByDesignation]
    repeat_first_low_within: Param[int]
    anc_range: Param[AncRange]
    suspect_magnitude: Param[list[SuspectBound]]
    count_units: Param[dict[str, Decimal]]
    unit_case_matters: Param[list[str]]
    percent_units: Param[list[str]]
    loinc: Param[LoincRoles]
    analyte_words: Param[dict[str, list[str]]]
    analyte_of_code: Param[AnalyteOfCode]
    clozapine_rxnorm: Param[list[str]]
    monitoring_interval: Param[dict[MonitoringFrequency, int]]
    phase_schedule: Param[list[PhaseStep]]
    interruption_resets_phase_after: Param[int]
    labs_missed_after: Param[int]
    enrollment_anc_max_age: Param[int]
    reenrollment_deadline: Param[date]
    rationale_reasons: Param[list[str]]
    rationale_text_required_for: Param[list[str]]
    psf_window: Param[int]
    psf_due_after: Param[int]  # calendar months
    psf_draft_lead: Param[int]
    psf_window_reminder: Param[int]
    labs_missed_rationale_window: Param[int]
    overrides: Param[OverrideLimit]
    discharge_cap: Param[DischargeCap]
    rda_validity: Param[int]
    # §10 shipments to pharmacies: may a wholesaler or distributor ship clozapine?
    wholesaler_check: Param[Literal["enforced", "paused", "not_applicable"]]
    recertification_notice: Param[int]  # days before recertify_by a warning is given

    @property
    def advisory(self) -> bool:
        return self.mode.value == "advisory"

    @property
    def warns_on_administrative_failures(self) -> bool:
        return self.administrative_failures.value == "warn"


class AutoRow(_Strict):
    from_: date = Field(alias="from")
    pack: str


class AutoChoice(_Strict):
    id: Literal["auto"]
    section: str
    use_for: str
    program_ended: date
    choose_by_clinical_date: list[AutoRow]


class SiteOverride(_Strict):
    site: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    packs: list[str] | None = None  # None: every pack
    parameters: dict[str, dict[str, Any]]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RulePackError(f"{path.name}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RulePackError(f"{path.name}: a rule pack is a mapping")
    return data


class PackLibrary:
    """Every pack of a folder, derived packs resolved, optionally with a site override."""

    def __init__(self, folder: Path = PACK_DIR, site_override: Path | None = None) -> None:
        raw = {}
        auto: AutoChoice | None = None
        for path in sorted(folder.glob("*.yaml")):
            data = _read_yaml(path)
            if data.get("id") == AUTO:
                auto = self._validate(AutoChoice, data, path.name)
            else:
                raw[data.get("id", path.stem)] = (data, path.name)
        self._packs = {pack_id: self._resolve(pack_id, raw, ()) for pack_id in raw}
        if site_override is not None:
            self._apply_site(site_override)
        if auto is None:
            raise RulePackError(f"{folder}: no auto.yaml")
        unknown = [row.pack for row in auto.choose_by_clinical_date if row.pack not in self._packs]
        if unknown:
            raise RulePackError(f"auto.yaml names unknown packs: {', '.join(unknown)}")
        self._auto = sorted(auto.choose_by_clinical_date, key=lambda row: row.from_)
        self.auto = auto

    @staticmethod
    def _validate(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise RulePackError(f"{where}: {problems}") from exc

    def _resolve(self, pack_id: str, raw: dict, seen: tuple[str, ...]) -> RulePack:
        if pack_id not in raw:
            raise RulePackError(f"unknown rule pack {pack_id!r} (extended by {seen[-1]})")
        if pack_id in seen:
            raise RulePackError(f"rule packs extend each other in a cycle: {' -> '.join(seen)}")
        data, where = raw[pack_id]
        parent = data.get("extends")
        if parent:
            base = self._resolve(parent, raw, (*seen, pack_id)).model_dump(by_alias=True)
            base.pop("extends", None)
            data = _merge(base, data)
        return self._validate(RulePack, data, where)

    def _apply_site(self, path: Path) -> None:
        site = self._validate(SiteOverride, _read_yaml(path), path.name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        for pack_id in site.packs or list(self._packs):
            pack = self.get(pack_id)
            data = _merge(pack.model_dump(by_alias=True), site.parameters)
            data["version"] = f"{pack.version}+{site.site}.{digest}"
            self._packs[pack_id] = self._validate(RulePack, data, path.name)

    def use_for(self, choice: str) -> str:
        return self.auto.use_for if choice == AUTO else self.get(choice).use_for

    @property
    def program_ended(self) -> date:
        return self.auto.program_ended

    @property
    def ids(self) -> list[str]:
        return [*sorted(self._packs), AUTO]

    def get(self, pack_id: str) -> RulePack:
        try:
            return self._packs[pack_id]
        except KeyError:
            known = ", ".join(self.ids)
            raise RulePackError(f"unknown rule pack {pack_id!r}; known: {known}") from None

    def for_date(self, choice: str, clinical_date: date) -> RulePack:
        """The pack configured as ``choice``, or the one ``auto`` picks for the date."""
        if choice != AUTO:
            return self.get(choice)
        chosen = [row.pack for row in self._auto if row.from_ <= clinical_date]
        if not chosen:
            first = self._auto[0].from_
            raise OutOfScope(
                f"No rule pack covers {clinical_date.isoformat()}: the modified Clozapine REMS "
                f"took effect on {first.isoformat()}."
            )
        return self.get(chosen[-1])
