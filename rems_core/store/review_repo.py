"""The review queue's reads and writes: items held for a person, the identifiers their results
wait for, and the client Patients that link FHIR references to registry patients."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from rems_core.model import Identifier
from rems_core.store import tables as t

review_t = t.ReviewItemRow.__table__
review_key_t = t.ReviewKeyRow.__table__
client_identifier_t = t.FhirPatientIdentifierRow.__table__
resource_t = t.FhirResourceRow.__table__

OPEN = "open"


@dataclass(frozen=True)
class ReviewFilter:
    status: str | None = OPEN  # None: any
    kind: str | None = None
    sender: str | None = None
    received_before: datetime | None = None  # older than an age
    count: int = 100
    offset: int = 0


def _item(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


class ReviewRepo:
    conn: Connection

    def add_review_item(self, values: dict[str, Any], keys: Iterable[Identifier]) -> None:
        self.conn.execute(insert(review_t).values(**values))
        rows = [{"review_id": values["id"], "system": k.system, "value": k.value} for k in keys]
        if rows:
            self.conn.execute(insert(review_key_t), rows)

    def review_items(self, wanted: ReviewFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the items that match, oldest first, and how many match in all."""
        where = []
        if wanted.status is not None:
            where.append(review_t.c.status == wanted.status)
        if wanted.kind is not None:
            where.append(review_t.c.kind == wanted.kind)
        if wanted.sender is not None:
            where.append(review_t.c.sender == wanted.sender)
        if wanted.received_before is not None:
            where.append(review_t.c.received < wanted.received_before)
        total = self.conn.execute(
            select(func.count()).select_from(review_t).where(*where)
        ).scalar_one()
        rows = self.conn.execute(
            select(review_t)
            .where(*where)
            .order_by(review_t.c.received, review_t.c.id)
            .limit(wanted.count)
            .offset(wanted.offset)
        ).all()
        return [_item(r) for r in rows], total

    def review_item(self, item_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(review_t).where(review_t.c.id == item_id)).first()
        return _item(row) if row is not None else None

    def held_of_message(self, message: str) -> list[dict[str, Any]]:
        """Open items of results of the message ``"MSH-3|MSH-4#MSH-10"``, oldest first."""
        rows = self.conn.execute(
            select(review_t)
            .where(review_t.c.message == message, review_t.c.status == OPEN)
            .order_by(review_t.c.received, review_t.c.id)
        ).all()
        return [_item(row) for row in rows]

    def held_for(self, keys: Iterable[Identifier]) -> list[dict[str, Any]]:
        """Open items whose results wait for one of these identifiers, oldest arrival first."""
        pairs = {(k.system, k.value) for k in keys}
        if not pairs:
            return []
        ids: set[str] = set()
        for system, value in sorted(pairs):
            ids.update(
                self.conn.execute(
                    select(review_key_t.c.review_id).where(
                        review_key_t.c.system == system, review_key_t.c.value == value
                    )
                ).scalars()
            )
        if not ids:
            return []
        rows = self.conn.execute(
            select(review_t)
            .where(review_t.c.id.in_(sorted(ids)), review_t.c.status == OPEN)
            .order_by(review_t.c.received, review_t.c.id)
        ).all()
        return [_item(r) for r in rows]

    def resolve_review_item(self, item_id: str, values: dict[str, Any]) -> None:
        """The item is no longer open (linked, discarded, purged): it waits for nothing."""
        self.conn.execute(update(review_t).where(review_t.c.id == item_id).values(**values))
        self.conn.execute(delete(review_key_t).where(review_key_t.c.review_id == item_id))

    def review_expiring(self, before: datetime) -> list[dict[str, Any]]:
        """Open items whose retention ends before ``before``."""
        rows = self.conn.execute(
            select(review_t)
            .where(
                review_t.c.status == OPEN,
                review_t.c.purge_after.is_not(None),
                review_t.c.purge_after < before,
            )
            .order_by(review_t.c.purge_after, review_t.c.id)
        ).all()
        return [_item(r) for r in rows]

    def review_counts(self) -> dict[tuple[str, str], int]:
        """Items by kind and status."""
        rows = self.conn.execute(
            select(review_t.c.kind, review_t.c.status, func.count()).group_by(
                review_t.c.kind, review_t.c.status
            )
        ).all()
        return {(kind, status): count for kind, status, count in rows}

    def drop_resources(self, references: Iterable[str]) -> None:
        """Every version of these held resources ("Type/id"): their retention ended."""
        for ref in references:
            kind, _, resource_id = ref.partition("/")
            self.conn.execute(
                delete(resource_t).where(
                    resource_t.c.resource_type == kind, resource_t.c.id == resource_id
                )
            )

    # --- client Patients ----------------------------------------------------------------------

    def set_client_patient_identifiers(
        self, resource_id: str, identifiers: Iterable[Identifier]
    ) -> None:
        self.conn.execute(
            delete(client_identifier_t).where(client_identifier_t.c.resource_id == resource_id)
        )
        rows = [
            {"resource_id": resource_id, "system": i.system, "value": i.value}
            for i in dict.fromkeys(identifiers)
        ]
        if rows:
            self.conn.execute(insert(client_identifier_t), rows)

    def client_patients_with(self, identifiers: Iterable[Identifier]) -> list[str]:
        """Ids of the client Patients that carry one of these identifiers."""
        found: set[str] = set()
        for identifier in set(identifiers):
            found.update(
                self.conn.execute(
                    select(client_identifier_t.c.resource_id).where(
                        client_identifier_t.c.system == identifier.system,
                        client_identifier_t.c.value == identifier.value,
                    )
                ).scalars()
            )
        return sorted(found)

    def link_resources(self, references: Iterable[str], patient_id: str) -> None:
        """Every version of these resources ("Type/id") is now of the registry patient."""
        for ref in references:
            kind, _, resource_id = ref.partition("/")
            self.conn.execute(
                update(resource_t)
                .where(resource_t.c.resource_type == kind, resource_t.c.id == resource_id)
                .values(patient_id=patient_id)
            )
