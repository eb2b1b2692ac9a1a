"""FHIR resources as received: every version kept, one current version per logical id.

The store knows resources only as JSON documents with a few indexed fields (patient, code,
effective time, business identifier); reading and shaping them is the FHIR mapping's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, literal, select, union_all, update

from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert, PreparedQuery

resource_t = t.FhirResourceRow.__table__
observation_t = t.ObservationRow.__table__
OBSERVATION = "Observation"
MAX_ROW_ID = 2**31 - 1  # observation ids are 32-bit integers
LAB_PREFIX = "lab-"  # an Observation id that names a stored lab result (LabRow), not a resource


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
class ResourceHead:
    """What the next version of a resource needs of its current one."""

    version_id: int
    owner: str | None


@dataclass(frozen=True)
class LabRow:
    """A lab result that did not come as a FHIR Observation (HL7 v2, a scenario's lab step): in
    the patient's FHIR record it is the Observation ``lab-<row id>``, rendered when read."""

    row_id: int
    patient_id: str
    specimen_key: str
    code: str
    value: str
    unit: str
    status: str
    drawn: datetime
    received: datetime
    source: str  # meta.source


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


def _current_version(*columns: Any) -> Any:
    """These columns of a resource's current version."""
    return select(*columns).where(
        resource_t.c.resource_type == bindparam("resource_type"),
        resource_t.c.id == bindparam("id"),
        resource_t.c.current.is_(True),
    )


_current = PreparedQuery(_current_version(resource_t))
_current_head = PreparedQuery(_current_version(resource_t.c.version_id, resource_t.c.owner))
_version = PreparedQuery(
    select(resource_t).where(
        resource_t.c.resource_type == bindparam("resource_type"),
        resource_t.c.id == bindparam("id"),
        resource_t.c.version_id == bindparam("version_id"),
    )
)
_by_identifier = PreparedQuery(
    select(resource_t).where(
        resource_t.c.resource_type == bindparam("resource_type"),
        resource_t.c.identifier == bindparam("identifier"),
        resource_t.c.current.is_(True),
    )
)
_by_content = PreparedQuery(
    select(resource_t).where(
        resource_t.c.resource_type == bindparam("resource_type"),
        resource_t.c.content_hash == bindparam("content_hash"),
        resource_t.c.owner == bindparam("owner"),
        resource_t.c.current.is_(True),
    )
)
_supersede = PreparedQuery(
    update(resource_t)
    .where(
        resource_t.c.resource_type == bindparam("of_type"),
        resource_t.c.id == bindparam("of_id"),
        resource_t.c.current.is_(True),
    )
    .values(current=False)
)
_insert = PreparedInsert(insert(resource_t))


def _lab_row(row: Any) -> LabRow:
    return LabRow(
        row.id,
        row.patient_id,
        row.specimen_key,
        row.code,
        row.value,
        row.unit,
        row.status,
        row.drawn,
        row.received,
        row.source,
    )


def _narrowed(query: ResourceQuery, patient: Any, code: Any, moment: Any) -> list[Any]:
    """The query's patient, code and time conditions, on these columns."""
    where = []
    if query.patient_ids is not None:
        where.append(patient.in_(list(query.patient_ids)))
    if query.codes:
        where.append(code.in_(list(query.codes)))
    if query.effective_from is not None:
        where.append(moment >= query.effective_from)
    if query.effective_before is not None:
        where.append(moment < query.effective_before)
    return where


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


def with_meta(body: dict[str, Any], resource_id: str, version: int, at: datetime) -> dict[str, Any]:
    meta = {**body.get("meta", {}), "versionId": str(version), "lastUpdated": at.isoformat()}
    return {"resourceType": body["resourceType"], "id": resource_id, "meta": meta} | {
        k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")
    }


class FhirRepo:
    conn: Connection

    def current_resource(self, resource_type: str, resource_id: str) -> StoredResource | None:
        found = _current.first(self.conn, {"resource_type": resource_type, "id": resource_id})
        return _stored(found) if found is not None else None

    def current_head(self, resource_type: str, resource_id: str) -> ResourceHead | None:
        """The current version's number and owner, without its body."""
        found = _current_head.first(self.conn, {"resource_type": resource_type, "id": resource_id})
        return ResourceHead(found.version_id, found.owner) if found is not None else None

    def resource_version(
        self, resource_type: str, resource_id: str, version: int
    ) -> StoredResource | None:
        found = _version.first(
            self.conn, {"resource_type": resource_type, "id": resource_id, "version_id": version}
        )
        return _stored(found) if found is not None else None

    def resource_by_identifier(self, resource_type: str, identifier: str) -> StoredResource | None:
        found = _by_identifier.first(
            self.conn, {"resource_type": resource_type, "identifier": identifier}
        )
        return _stored(found) if found is not None else None

    def resource_by_content(
        self, resource_type: str, content_hash: str, owner: str
    ) -> StoredResource | None:
        """A current resource of ``owner``'s with this content: a create sent again."""
        found = _by_content.first(
            self.conn,
            {"resource_type": resource_type, "content_hash": content_hash, "owner": owner},
        )
        return _stored(found) if found is not None else None

    def put_resource(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        content_hash: str,
        index: ResourceIndex,
        at: datetime,
        current: StoredResource | ResourceHead | None = None,
        owner: str | None = None,
    ) -> StoredResource:
        """Store ``body`` as the next version of ``current`` (the resource's current version,
        which the caller has read), or as a new resource of ``owner``."""
        version = current.version_id + 1 if current is not None else 1
        if current is not None:
            _supersede.run(self.conn, {"of_type": resource_type, "of_id": resource_id})
        stored = with_meta(body, resource_id, version, at)
        owner = current.owner if current is not None else owner
        _insert.run(
            self.conn,
            [
                {
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
                    "owner": owner,
                }
            ],
        )
        return StoredResource(
            resource_type, resource_id, version, at, content_hash, stored, owner, index.patient_id
        )

    def search_resources(self, query: ResourceQuery) -> tuple[list[StoredResource | LabRow], int]:
        """The current resources that match, one page of them, and how many match in all. For
        Observations, the lab results that did not come as FHIR Observations are among them."""
        where = [resource_t.c.resource_type == query.resource_type, resource_t.c.current.is_(True)]
        where += _narrowed(
            query, resource_t.c.patient_id, resource_t.c.code, resource_t.c.effective
        )
        keys = select(
            literal(0).label("lab"), resource_t.c.row_id.label("key"), resource_t.c.effective
        ).where(and_(*where))
        if query.resource_type == OBSERVATION:
            keys = union_all(keys, self._lab_keys(query))
        found = keys.subquery()
        total = self.conn.execute(select(func.count()).select_from(found)).scalar_one()
        moment = found.c.effective.desc() if query.newest_first else found.c.effective
        page = self.conn.execute(
            select(found.c.lab, found.c.key)
            .order_by(moment, found.c.lab, found.c.key)
            .limit(query.count)
            .offset(query.offset)
        ).all()
        return self._page([(bool(r.lab), r.key) for r in page]), total

    def _lab_keys(self, query: ResourceQuery) -> Any:
        where = [
            observation_t.c.source != "",
            observation_t.c.current.is_(True),
            observation_t.c.patient_id.is_not(None),
        ]
        where += _narrowed(
            query, observation_t.c.patient_id, observation_t.c.code, observation_t.c.drawn
        )
        return select(literal(1), observation_t.c.id, observation_t.c.drawn).where(and_(*where))

    def _page(self, keys: list[tuple[bool, int]]) -> list[StoredResource | LabRow]:
        """The rows of one page, in its order."""
        resource_keys = [key for lab, key in keys if not lab]
        lab_keys = [key for lab, key in keys if lab]
        found: dict[tuple[bool, int], StoredResource | LabRow] = {}
        if resource_keys:
            rows = self.conn.execute(
                select(resource_t).where(resource_t.c.row_id.in_(resource_keys))
            )
            found |= {(False, r.row_id): _stored(r) for r in rows}
        if lab_keys:
            rows = self.conn.execute(select(observation_t).where(observation_t.c.id.in_(lab_keys)))
            found |= {(True, r.id): _lab_row(r) for r in rows}
        return [found[key] for key in keys]

    def lab_row(self, resource_id: str) -> LabRow | None:
        """The lab result an Observation id `lab-<row id>` names (superseded ones too: a
        correction is a new Observation, the one it replaced stays readable)."""
        number = resource_id.removeprefix(LAB_PREFIX)
        if not resource_id.startswith(LAB_PREFIX) or not number.isdecimal() or len(number) > 10:
            return None
        if int(number) > MAX_ROW_ID:
            return None
        row = self.conn.execute(
            select(observation_t).where(
                observation_t.c.id == int(number), observation_t.c.source != ""
            )
        ).first()
        return _lab_row(row) if row is not None else None
