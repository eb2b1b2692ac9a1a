"""Admin operations (admin scope): `POST /admin/registry` (the registry block of
docs/contracts.md §2), `POST /admin/scheduled-work` and `GET /admin/scheduler`."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict

from gateway.app.reads import RemsReads
from gateway.app.service import SCHEDULER_LEASE, RemsService
from gateway.app.values import Source
from gateway.fhir.auth import ADMIN_SCOPE
from gateway.fhir.http import JsonRefused, decode_json, json_depth
from gateway.fhir.smart import (
    InvalidAccessToken,
    SmartBackendAuth,
    bearer_token,
    invalid_token_challenge,
)
from gateway.http.errors import ApiError, error_responses
from rems_core.registry import (
    RegistryConflict,
    RegistryDocument,
    RegistryInvalid,
    registry_from,
    yaml_problem,
)

log = logging.getLogger("rems_gateway.admin")
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses=error_responses(400, 401, 403, 409, 413, 415, 422, 500, 503),
)

JSON_TYPES = {"application/json"}
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml"}
TOKEN_ACTOR = "admin-token"
OPEN_ACTOR = "admin-unauthenticated"  # no admin token configured (warned about at start-up)


def require_admin(request: Request) -> str:
    """The actor holding admin scope: the bearer of the configured admin token, or of a SMART
    access token granted the `admin` scope. Open (warned at start-up) only when neither an
    admin token nor a SMART client allowed `admin` is configured."""
    token = request.app.state.settings.admin_token
    smart = _smart_admin(request)
    if token is None and smart is None:
        return OPEN_ACTOR
    given = bearer_token(request)
    if given is None:
        raise ApiError(
            401,
            "unauthorized",
            "admin scope required: send 'Authorization: Bearer <admin token or access token>'",
            {"WWW-Authenticate": 'Bearer realm="rems-gateway admin"'},
        )
    if token is not None and secrets.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        return TOKEN_ACTOR
    if smart is not None and given.count(".") == 2:  # a JWT: one of our access tokens?
        return _smart_actor(smart, given)
    raise ApiError(403, "forbidden", "this token does not grant admin scope")


def _smart_admin(request: Request) -> SmartBackendAuth | None:
    auth = request.app.state.fhir_auth
    if isinstance(auth, SmartBackendAuth) and any(
        ADMIN_SCOPE in client.scopes for client in auth.clients.values()
    ):
        return auth
    return None


def _smart_actor(smart: SmartBackendAuth, token: str) -> str:
    try:
        principal = smart.verify(token)
    except InvalidAccessToken as exc:
        raise ApiError(401, "unauthorized", str(exc), invalid_token_challenge(exc)) from None
    if ADMIN_SCOPE not in principal.scopes:
        raise ApiError(403, "forbidden", "this token does not grant admin scope")
    return f"smart:{principal.client_id}"


def parse_body(content_type: str, body: bytes, max_depth: int) -> Any:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in JSON_TYPES:
        try:
            return decode_json(body, max_depth)
        except JsonRefused as refused:
            raise ApiError(400, "invalid_body", str(refused)) from None
    if media_type in YAML_TYPES:
        return _yaml_body(body, max_depth)
    accepted = ", ".join(sorted(JSON_TYPES | YAML_TYPES))
    raise ApiError(415, "unsupported_media_type", f"send the registry block as one of: {accepted}")


class _LoaderWithoutAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: a registry block never needs them, and an alias of an
    alias of … ("billion laughs") would make a small body exponentially large to walk."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not accepted", mark
            )
        return super().compose_node(parent, index)


def _yaml_body(body: bytes, max_depth: int) -> Any:
    too_deep = ApiError(400, "invalid_body", f"the body is nested deeper than {max_depth} levels")
    try:
        data = yaml.load(body, Loader=_LoaderWithoutAliases)
    except RecursionError:
        raise too_deep from None
    except yaml.YAMLError as exc:
        raise ApiError(400, "invalid_body", f"the body is {yaml_problem(exc)}") from None
    if json_depth(data, max_depth) > max_depth:
        raise too_deep
    return data


def registry_document(data: Any) -> RegistryDocument:
    try:
        return registry_from(data)
    except RegistryInvalid as exc:
        raise ApiError(422, "invalid_registry", str(exc), issues=exc.issues) from None


@router.post("/registry")
async def post_registry(
    request: Request, actor: Annotated[str, Depends(require_admin)]
) -> dict[str, Any]:
    """Load prescribers, designees, pharmacies and patients; idempotent, changes are updates."""
    content_type = request.headers.get("content-type", "")
    max_depth = request.app.state.settings.json_max_depth
    doc = registry_document(parse_body(content_type, await request.body(), max_depth))
    service: RemsService = request.app.state.service
    try:
        patient_ids = await service.load_registry(doc, Source("admin", actor))
    except RegistryConflict as exc:
        raise ApiError(409, "registry_conflict", f"nothing loaded: {exc}") from None
    counts = {
        "prescribers": len(doc.prescribers),
        "pharmacies": len(doc.pharmacies),
        "wholesalers": len(doc.wholesalers),
        "distributors": len(doc.distributors),
        "patients": len(patient_ids),
    }
    log.info("registry loaded", extra={"actor": actor, **counts})
    return {**counts, "patient_ids": patient_ids}


class ScheduledWork(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: AwareDatetime | None = None  # default: now
    patients: list[str] | None = None  # REMS patient ids; default: every patient


@router.post("/scheduled-work")
async def post_scheduled_work(
    work: ScheduledWork, request: Request, actor: Annotated[str, Depends(require_admin)]
) -> dict[str, Any]:
    """Run §8 scheduled work up to a time (replays and scenario runs: ``--clock message``)."""
    now = datetime.now(UTC)
    until = work.until or now
    if until > now and request.app.state.settings.clock == "system":
        raise ApiError(
            422,
            "until_in_future",
            "this gateway runs on the system clock: until must not be after now",
        )
    service: RemsService = request.app.state.service
    found = await service.run_scheduled(until, work.patients, Source("admin", actor))
    log.info("scheduled work run", extra={"actor": actor, "patients": len(found)})
    return {
        "until": until.isoformat(),
        "patients": {pid: [f.as_dict() for f in findings] for pid, findings in found.items()},
    }


@router.get("/scheduler")
async def get_scheduler(
    request: Request, _actor: Annotated[str, Depends(require_admin)]
) -> dict[str, Any]:
    """Which gateway of those on this database holds the scheduler lease, until when, and when
    the scheduled work last ran (``lease`` null: no gateway has taken it yet)."""
    reads: RemsReads = request.app.state.reads
    lease = await reads.lease(SCHEDULER_LEASE)
    if lease is not None:
        del lease["name"]
    return {"lease": lease}
