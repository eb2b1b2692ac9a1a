"""The registry's reads and writes (§4): prescribers, designees, pharmacies, patients.

Loading is an upsert that reports what it changed (for the audit), never a blind overwrite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update

from rems_core.model import (
    Designation,
    Designee,
    Identifier,
    Patient,
    Pharmacy,
    PharmacyEnrollment,
    Prescriber,
    Setting,
)
from rems_core.registry import PatientEntry, PharmacyEntry, PrescriberEntry, RegistryConflict
from rems_core.store import tables as t
from rems_core.store.prepared import PreparedQuery
from rems_core.store.subscription_repo import Listener

prescriber_t = t.PrescriberRow.__table__
designee_t = t.DesigneeRow.__table__
attachment_t = t.DesigneeAttachment.__table__
pharmacy_t = t.PharmacyRow.__table__
enrollment_t = t.PharmacyEnrollmentRow.__table__
patient_t = t.PatientRow.__table__
identifier_t = t.PatientIdentifierRow.__table__

PATIENTS_KEPT = 100_000  # identifier lookups remembered between batches

# Built once: building a statement costs more than running it.
_patient_by_identifier = PreparedQuery(
    select(patient_t, identifier_t.c.system, identifier_t.c.value)
    .select_from(identifier_t)
    .join(patient_t, patient_t.c.id == identifier_t.c.patient_id)
    .where(
        patient_t.c.id
        == select(identifier_t.c.patient_id)
        .where(
            identifier_t.c.system == bindparam("system"), identifier_t.c.value == bindparam("value")
        )
        .scalar_subquery()
    )
)
_patient_by_id = PreparedQuery(
    select(patient_t, identifier_t.c.system, identifier_t.c.value)
    .select_from(patient_t)
    .outerjoin(identifier_t, identifier_t.c.patient_id == patient_t.c.id)
    .where(patient_t.c.id == bindparam("patient_id"))
)
# One round trip each: the record with its designees / enrollments (a row per one of those).
_prescribers = (
    select(prescriber_t, designee_t.c.id.label("designee_id"), designee_t.c.name.label("designee"))
    .select_from(prescriber_t)
    .outerjoin(attachment_t, attachment_t.c.prescriber_npi == prescriber_t.c.npi)
    .outerjoin(designee_t, designee_t.c.id == attachment_t.c.designee_id)
    .where(prescriber_t.c.npi.in_(bindparam("npis", expanding=True)))
)
_pharmacies = (
    select(
        pharmacy_t,
        enrollment_t.c.setting,
        enrollment_t.c.certified,
        enrollment_t.c.certified_on,
        enrollment_t.c.recertify_by,
    )
    .select_from(pharmacy_t)
    .outerjoin(enrollment_t, enrollment_t.c.pharmacy_npi == pharmacy_t.c.npi)
    .where(pharmacy_t.c.npi.in_(bindparam("npis", expanding=True)))
)


def _patient(rows: list[Any]) -> Patient | None:
    if not rows:
        return None
    row = rows[0]
    return Patient(
        rems_id=row.id,
        identifiers=tuple(Identifier(r.system, r.value) for r in rows if r.system is not None),
        designation=Designation(row.designation),
        treatment_start=row.treatment_start,
        legacy_enrolled=row.legacy_enrolled,
    )


@dataclass(frozen=True)
class Demographics:
    family_name: str
    given_name: str
    birth_date: date | None
    sex: str | None


@dataclass(frozen=True)
class Change:
    """What a registry load did to one record: the kind of change and the fields (no values)."""

    kind: str
    fields: list[str]


def _named(subject: str, change: Change | None) -> list[tuple[str, Change]]:
    return [(subject, change)] if change else []


@dataclass
class RegistryCache:
    prescribers: dict[str, Prescriber | None]
    pharmacies: dict[str, Pharmacy | None]
    patients: dict[Identifier, Patient | None]
    listeners: dict[str, tuple[Listener, ...]]  # by topic (subscription_repo.py)


class RegistryRepo:
    """Registry reads are remembered for the life of one Store (one batch, under the chain
    head's lock, so no other writer can change the registry meanwhile); any write forgets them."""

    conn: Connection
    registry_changed: bool
    _prescribers: dict[str, Prescriber | None]
    _pharmacies: dict[str, Pharmacy | None]
    _patients: dict[Identifier, Patient | None]
    _listeners: dict[str, tuple[Listener, ...]]

    def forget_cached(self) -> None:
        self._prescribers, self._pharmacies, self._patients = {}, {}, {}
        self._listeners = {}

    def share_cache(self, cache: RegistryCache) -> None:
        """Use (and fill) reads that an earlier batch made at the same registry version."""
        self._prescribers, self._pharmacies = cache.prescribers, cache.pharmacies
        self._patients, self._listeners = cache.patients, cache.listeners

    def cache(self) -> RegistryCache:
        if len(self._patients) > PATIENTS_KEPT:  # e.g. a feed full of unknown patients
            self._patients = {}
        return RegistryCache(self._prescribers, self._pharmacies, self._patients, self._listeners)

    def _upsert(self, table: Any, keys: dict[str, Any], values: dict[str, Any]) -> Change | None:
        """Insert or update one row; what changed (field names only), or None."""
        self.forget_cached()
        self.registry_changed = True
        where = and_(*(table.c[k] == v for k, v in keys.items()))
        row = self.conn.execute(select(table).where(where)).mappings().first()
        if row is None:
            self.conn.execute(insert(table).values(**keys, **values))
            return Change("inserted", sorted(values))
        changed = {k: v for k, v in values.items() if row[k] != v}
        if changed:
            self.conn.execute(update(table).where(where).values(**changed))
            return Change("updated", sorted(changed))
        return None

    def upsert_prescriber(self, entry: PrescriberEntry) -> list[tuple[str, Change]]:
        """The entry's designees are the prescriber's designees: others are detached."""
        fields = {
            "name": entry.name,
            "certified": entry.certified,
            "certified_on": entry.certified_on,
            "dea": entry.dea,
            "email": entry.email,
        }
        changes = _named(entry.npi, self._upsert(prescriber_t, {"npi": entry.npi}, fields))
        listed = {d.id for d in entry.designees}
        for designee in entry.designees:
            changes += _named(
                designee.id, self._upsert(designee_t, {"id": designee.id}, {"name": designee.name})
            )
            attached = self._upsert(
                attachment_t, {"designee_id": designee.id, "prescriber_npi": entry.npi}, {}
            )
            changes += _named(designee.id, attached and Change("attached", [entry.npi]))
        for designee_id in set(self.designees_of(entry.npi)) - listed:
            self.conn.execute(
                delete(attachment_t).where(
                    attachment_t.c.designee_id == designee_id,
                    attachment_t.c.prescriber_npi == entry.npi,
                )
            )
            changes.append((designee_id, Change("detached", [entry.npi])))
        return changes

    def designees_of(self, npi: str) -> list[str]:
        return list(
            self.conn.execute(
                select(attachment_t.c.designee_id).where(attachment_t.c.prescriber_npi == npi)
            ).scalars()
        )

    def upsert_pharmacy(self, entry: PharmacyEntry) -> list[tuple[str, Change]]:
        fields = {"name": entry.name, "ncpdp": entry.ncpdp}
        changes = _named(entry.npi, self._upsert(pharmacy_t, {"npi": entry.npi}, fields))
        for enrollment in entry.enrollments:
            change = self._upsert(
                enrollment_t,
                {"pharmacy_npi": entry.npi, "setting": enrollment.setting.value},
                {
                    "certified": enrollment.certified,
                    "certified_on": enrollment.certified_on,
                    "recertify_by": enrollment.recertify_by,
                },
            )
            changes += _named(f"{entry.npi}/{enrollment.setting.value}", change)
        return changes

    def upsert_patient(
        self, entry: PatientEntry, new_id: str
    ) -> tuple[str, list[tuple[str, Change]]]:
        """Match on identifier + system (never on name and birth date); a new patient gets
        ``new_id``. Identifiers are only ever added. Returns the REMS id and the changes."""
        idents = [Identifier(i.system, i.value) for i in entry.identifiers]
        owners = {p.rems_id for p in (self.find_patient([i]) for i in idents) if p is not None}
        if len(owners) > 1:
            raise RegistryConflict(
                f"one patient entry names identifiers of {len(owners)} different patients"
            )
        patient_id = owners.pop() if owners else new_id
        fields = {
            "designation": entry.designation.value,
            "treatment_start": entry.treatment_start,
            "legacy_enrolled": entry.legacy_enrolled,
            "family_name": entry.name.family,
            "given_name": entry.name.given,
            "birth_date": entry.birth_date,
            "sex": entry.sex,
        }
        changes = _named(patient_id, self._upsert(patient_t, {"id": patient_id}, fields))
        for ident in idents:
            added = self._upsert(
                identifier_t,
                {"system": ident.system, "value": ident.value},
                {"patient_id": patient_id},
            )
            changes += _named(patient_id, added and Change("identifier added", [ident.system]))
        return patient_id, changes

    def find_patient(self, identifiers: Iterable[Identifier]) -> Patient | None:
        for ident in identifiers:
            if ident not in self._patients:
                rows = _patient_by_identifier.rows(
                    self.conn, {"system": ident.system, "value": ident.value}
                )
                self._patients[ident] = _patient(rows)
            if (patient := self._patients[ident]) is not None:
                return patient
        return None

    def patients_named(self, identifiers: Iterable[Identifier]) -> list[Patient]:
        """Every registry patient one of ``identifiers`` names, each once, in their order."""
        found: dict[str, Patient] = {}
        for ident in identifiers:
            patient = self.find_patient([ident])
            if patient is not None:
                found.setdefault(patient.rems_id, patient)
        return list(found.values())

    def add_patient_identifier(self, patient_id: str, identifier: Identifier) -> None:
        """A new identifier of a registry patient (the caller checked nobody holds it)."""
        self.forget_cached()
        self.registry_changed = True
        self.conn.execute(
            insert(identifier_t).values(
                system=identifier.system, value=identifier.value, patient_id=patient_id
            )
        )

    def patient(self, patient_id: str) -> Patient | None:
        return _patient(_patient_by_id.rows(self.conn, {"patient_id": patient_id}))

    def patient_demographics(self, patient_id: str) -> Demographics | None:
        """Name, birth date and sex as the registry holds them (the FHIR Patient; never logged)."""
        row = self.conn.execute(
            select(
                patient_t.c.family_name,
                patient_t.c.given_name,
                patient_t.c.birth_date,
                patient_t.c.sex,
            ).where(patient_t.c.id == patient_id)
        ).first()
        return Demographics(*row) if row is not None else None

    def set_designation(self, patient_id: str, designation: Designation) -> None:
        """The designation is registry data: writers of other processes must read it anew."""
        self.forget_cached()
        self.registry_changed = True
        self.conn.execute(
            update(patient_t)
            .where(patient_t.c.id == patient_id)
            .values(designation=designation.value)
        )

    def patient_ids(self) -> list[str]:
        return list(self.conn.execute(select(patient_t.c.id).order_by(patient_t.c.id)).scalars())

    def prescribers(self, npis: Iterable[str]) -> dict[str, Prescriber]:
        wanted = {n for n in npis if n}
        missing = wanted - self._prescribers.keys()
        if missing:
            found = self._read_prescribers(missing)
            self._prescribers.update({npi: found.get(npi) for npi in missing})
        return {n: p for n in wanted if (p := self._prescribers[n]) is not None}

    def _read_prescribers(self, wanted: set[str]) -> dict[str, Prescriber]:
        rows = self.conn.execute(_prescribers, {"npis": sorted(wanted)}).all()
        designees: dict[str, list[Designee]] = {}
        for r in rows:
            attached = designees.setdefault(r.npi, [])
            if r.designee_id is not None:
                attached.append(Designee(r.designee_id, r.designee))
        return {
            r.npi: Prescriber(
                npi=r.npi,
                name=r.name,
                certified=r.certified,
                certified_on=r.certified_on,
                dea=r.dea,
                email=r.email,
                designees=tuple(designees[r.npi]),
            )
            for r in rows
        }

    def prescribers_of_designee(self, designee_id: str) -> list[str]:
        return list(
            self.conn.execute(
                select(attachment_t.c.prescriber_npi).where(
                    attachment_t.c.designee_id == designee_id
                )
            ).scalars()
        )

    def pharmacies(self, npis: Iterable[str]) -> dict[str, Pharmacy]:
        wanted = {n for n in npis if n}
        missing = wanted - self._pharmacies.keys()
        if missing:
            found = self._read_pharmacies(missing)
            self._pharmacies.update({npi: found.get(npi) for npi in missing})
        return {n: p for n in wanted if (p := self._pharmacies[n]) is not None}

    def _read_pharmacies(self, wanted: set[str]) -> dict[str, Pharmacy]:
        rows = self.conn.execute(_pharmacies, {"npis": sorted(wanted)}).all()
        enrollments: dict[str, list[PharmacyEnrollment]] = {}
        for r in rows:
            settings = enrollments.setdefault(r.npi, [])
            if r.setting is not None:
                settings.append(
                    PharmacyEnrollment(
                        Setting(r.setting), r.certified, r.certified_on, r.recertify_by
                    )
                )
        return {r.npi: Pharmacy(r.npi, r.name, r.ncpdp, tuple(enrollments[r.npi])) for r in rows}
