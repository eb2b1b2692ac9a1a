"""FHIR resources as received: every version kept, one current version per logical id.

The store knows resources only as JSON documents with a few indexed fields (patient, code,
effective time, business identifier); reading and shaping them is the FHIR mapping's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert

resource_t = t.FhirResourceRow.__table__


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content_hash: str
    body: dict[str, Any]  # with id and meta.versionId / meta.lastUpdated
    owner: str | None = None  # the client that created it; None: the gateway
    patient_id: str | None = None  # the registry patient it is of (indexed)


@dataclass(frozen=True)
class ResourceIndex:
    """What a resource is found by."""

    identifier: str | None = None  # "system|value"
    patient_id: str | None = None
    code: str | None = None
    effective: datetime | None = None


@dataclass(frozen=True)
class ResourceQuery:
    resource_type: str
    patient_ids: Sequence[str] | None = None  # None: any patient
    codes: Sequence[str] = ()
    effective_from: datetime | None = None  # inclusive
    effective_before: datetime | None = None  # exclusive
    newest_first: bool = False
    count: int = 50
    offset: int = 0


_current = select(resource_t).where(
    resource_t.c.resource_type == bindparam("resource_type"),
    resource_t.c.id == bindparam("id"),
    resource_t.c.current.is_(True),
)
_version = select(resource_t).where(
    resource_t.c.resource_type == bindparam("resource_type"),
    resource_t.c.id == bindparam("id"),
    resource_t.c.version_id == bindparam("version_id"),
)
_by_identifier = select(resource_t).where(
    resource_t.c.resource_type == bindparam("resource_type"),
    resource_t.c.identifier == bindparam("identifier"),
    resource_t.c.current.is_(True),
)
_supersede = (
    update(resource_t)
    .where(
        resource_t.c.resource_type == bindparam("of_type"),
        resource_t.c.id == bindparam("of_id"),
        resource_t.c.current.is_(True),
    )
    .values(current=False)
)
_insert = PreparedInsert(insert(resource_t))


def _stored(row: Any) -> StoredResource:
    return StoredResource(
        row.resource_type,
        row.id,
        row.version_id,
        row.last_updated,
        row.content_hash,
        row.body,
        row.owner,
        row.patient_id,
    )


def _stored_values(values: dict[str, Any]) -> StoredResource:
    return StoredResource(
        values["resource_type"],
        values["id"],
        values["version_id"],
        values["last_updated"],
        values["content_hash"],
        values["body"],
        values["owner"],
        values["patient_id"],
    )


def with_meta(body: dict[str, Any], resource_id: str, version: int, at: datetime) -> dict[str, Any]:
    meta = {**body.get("meta", {}), "versionId": str(version), "lastUpdated": at.isoformat()}
    return {"resourceType": body["resourceType"], "id": resource_id, "meta": meta} | {
        k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")
    }


class FhirRepo:
    conn: Connection
    _deferred: dict[PreparedInsert, list[dict[str, Any]]]

    def _write(self, statement: PreparedInsert, values: dict[str, Any]) -> None: ...

    def current_resource(self, resource_type: str, resource_id: str) -> StoredResource | None:
        pending = self._pending_resource(resource_type, resource_id)
        if pending is not None:
            return _stored_values(pending)
        row = self.conn.execute(_current, {"resource_type": resource_type, "id": resource_id})
        found = row.first()
        return _stored(found) if found is not None else None

    def resource_version(
        self, resource_type: str, resource_id: str, version: int
    ) -> StoredResource | None:
        found = self.conn.execute(
            _version, {"resource_type": resource_type, "id": resource_id, "version_id": version}
        ).first()
        return _stored(found) if found is not None else None

    def resource_by_identifier(self, resource_type: str, identifier: str) -> StoredResource | None:
        found = self.conn.execute(
            _by_identifier, {"resource_type": resource_type, "identifier": identifier}
        ).first()
        return _stored(found) if found is not None else None

    def put_resource(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        content_hash: str,
        index: ResourceIndex,
        at: datetime,
        current: StoredResource | None = None,
        owner: str | None = None,
        defer: bool = False,
    ) -> StoredResource:
        """Store ``body`` as the next version of ``current`` (the resource's current version,
        which the caller has read), or as a new resource of ``owner``. ``defer``: the row may go
        with the batch's other deferred rows (nothing but ``current_resource`` reads it back)."""
        version = current.version_id + 1 if current is not None else 1
        if current is not None:
            pending = self._pending_resource(resource_type, resource_id)
            if pending is not None:
                pending["current"] = False
            else:
                self.conn.execute(_supersede, {"of_type": resource_type, "of_id": resource_id})
        stored = with_meta(body, resource_id, version, at)
        values = {
            "resource_type": resource_type,
            "id": resource_id,
            "version_id": version,
            "current": True,
            "last_updated": at,
            "identifier": index.identifier,
            "content_hash": content_hash,
            "patient_id": index.patient_id,
            "code": index.code,
            "effective": index.effective,
            "body": stored,
            "owner": current.owner if current is not None else owner,
        }
        if defer:
            self._write(_insert, values)
        else:
            _insert.run(self.conn, [values])
        return _stored_values(values)

    def _pending_resource(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version of a resource written earlier in this batch, not sent yet."""
        for values in reversed(self._deferred.get(_insert, ())):
            if (values["resource_type"], values["id"]) == (resource_type, resource_id):
                return values if values["current"] else None
        return None

    def search_resources(self, query: ResourceQuery) -> tuple[list[StoredResource], int]:
        """The current resources that match, one page of them, and how many match in all."""
        where = [resource_t.c.resource_type == query.resource_type, resource_t.c.current.is_(True)]
        if query.patient_ids is not None:
            where.append(resource_t.c.patient_id.in_(list(query.patient_ids)))
        if query.codes:
            where.append(resource_t.c.code.in_(list(query.codes)))
        if query.effective_from is not None:
            where.append(resource_t.c.effective >= query.effective_from)
        if query.effective_before is not None:
            where.append(resource_t.c.effective < query.effective_before)
        condition = and_(*where)
        total = self.conn.execute(
            select(func.count()).select_from(resource_t).where(condition)
        ).scalar_one()
        order = resource_t.c.effective.desc() if query.newest_first else resource_t.c.effective
        rows = self.conn.execute(
            select(resource_t)
            .where(condition)
            .order_by(order, resource_t.c.row_id)
            .limit(query.count)
            .offset(query.offset)
        ).all()
        return [_stored(r) for r in rows], total
