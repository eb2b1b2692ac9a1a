"""`GET /cds-services` and `POST /cds-services/{id}` (docs/contracts.md §6): a hook call answered
with cards.

The patient comes from the prefetched Patient, a Patient the same EHR stored as a FHIR client,
or the EHR's FHIR server (allow-listed); the prefetched labs go through the ordinary lab path
(no write when they are on file already); each clozapine order is checked exactly as
`$rems-etasu` checks it, read-only. The cards are kept without waiting for the commit, so that
feedback can name them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import accumulate
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.app.values import HookChecks, Source
from gateway.cds.auth import CdsAuthError, service_audiences
from gateway.cds.clients import CdsClient
from gateway.cds.fhir_fetch import FetchFailed, FetchRefused, fetch
from gateway.cds.readings import Readings
from gateway.fhir.http import (
    FHIR_JSON,
    JSON_TYPES,
    FhirError,
    JsonRefused,
    control_character_at,
    decode_json,
)
from gateway.fhir.openapi import OUTCOME_SCHEMA
from gateway.fhir.resources import clinical_now, context_of, reads_of, service_of
from mappings.cds import services
from mappings.cds.cards import CardSource, OrderCard, monitoring_card, order_card
from mappings.cds.request import (
    MEDICATION_REQUEST,
    HookInvalid,
    HookOrder,
    HookRequest,
    bundle_resources,
    clozapine_drug,
    hook_order,
    order_reference,
    patient_identifiers,
    practitioner_npi,
    read_hook_request,
    selected,
)
from mappings.fhir.medication_request import CATEGORY_SYSTEM
from mappings.fhir.observation import read_observation
from rems_core.model import Identifier, LabResult, Setting

router = APIRouter(tags=["CDS Hooks"])
CHANNEL = "cds-hooks"
SOURCE_LABEL = "Clozapine REMS gateway"
NO_CARDS: dict[str, Any] = {"cards": []}
T = TypeVar("T")
_OUTCOME = {"info": "authorized", "warning": "incomplete", "critical": "denied"}


def _json(schema: dict[str, Any], description: str, media: str = "application/json") -> dict:
    return {"description": description, "content": {media: {"schema": schema}}}


CDS_ERRORS = {
    400: "Not JSON, not a hook request, the wrong hook, or an order or Patient not valid R4",
    401: "No CDS client JWT, or one that is not valid (the OperationOutcome says why)",
    404: "No such CDS service, or (feedback) a card it did not answer",
    412: "A prefetch value the service needs was not sent and could not be fetched",
    413: "The body is larger than the limit (http_max_body_bytes)",
    415: "Send application/json",
    422: "Before any rule pack applies",
    500: "Internal error",
    503: "The store is unavailable or the gateway shuts down; see Retry-After",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: _json(OUTCOME_SCHEMA, text, FHIR_JSON) for status, text in CDS_ERRORS.items()
}


def json_request(schema: dict[str, Any]) -> dict[str, Any]:
    """An operation's required application/json request body, for /openapi.json."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


HOOK_REQUEST = json_request(
    {
        "type": "object",
        "required": ["hook", "hookInstance", "context"],
        "properties": {
            "hook": {"type": "string"},
            "hookInstance": {"type": "string"},
            "context": {"type": "object"},
            "prefetch": {"type": "object"},
            "fhirServer": {"type": "string"},
            "fhirAuthorization": {"type": "object"},
        },
    }
)
CARDS = {"type": "object", "required": ["cards"], "properties": {"cards": {"type": "array"}}}
SERVICES = {
    "type": "object",
    "required": ["services"],
    "properties": {"services": {"type": "array"}},
}


@router.get("/cds-services", responses={200: _json(SERVICES, "The CDS services")})
async def discovery() -> JSONResponse:
    """The services (public, like /fhir/metadata)."""
    return JSONResponse(services.discovery())


@router.post(
    "/cds-services/{service_id}",
    responses={200: _json(CARDS, "The cards (none: no clozapine order)"), **ERROR_RESPONSES},
    openapi_extra=HOOK_REQUEST,
)
async def call_service(request: Request, service_id: str) -> JSONResponse:
    service = known_service(service_id)
    client = await authenticated(request, service_id, feedback=False)
    data = await hook_body(request)
    try:
        hook = read_hook_request(data, service.hook)
        call = HookCall(request, service, hook, client, clinical_now(request))
        return JSONResponse(await call.answer())
    except HookInvalid as invalid:
        path = (invalid.path,) if invalid.path else ()
        raise FhirError(400, "invalid", str(invalid), path) from None


def known_service(service_id: str) -> services.CdsService:
    service = services.SERVICES.get(service_id)
    if service is None:
        raise FhirError(404, "not-found", f"no CDS service {service_id!r} (see GET /cds-services)")
    return service


async def authenticated(request: Request, service_id: str, feedback: bool) -> CdsClient:
    settings = request.app.state.settings
    audiences = service_audiences(request, settings.public_base_url, service_id, feedback)
    try:
        return await request.app.state.cds_auth.client(request, audiences)
    except CdsAuthError as refused:
        raise FhirError(
            401, "login", str(refused), headers={"WWW-Authenticate": "Bearer"}
        ) from None


async def hook_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (application/json, as CDS clients send it), or 415/400."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise FhirError(415, "not-supported", "send application/json")
    body = await request.body()
    try:
        data = _decoded(body, request.app.state.settings.json_max_depth)
    except JsonRefused as refused:
        raise FhirError(400, "structure", str(refused)) from None
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "the body must be a JSON object (a hook request)")
    where = control_character_at(data) if _may_hold_control_characters(body) else None
    if where is not None:
        raise FhirError(400, "value", "a string holds a control character", (where,))
    return data


# A hook request is large (a dozen resources): its nesting is counted on the bytes, by C code,
# rather than by walking the decoded value.
_NOT_A_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_STEP = [{ord("{"): 1, ord("["): 1, ord("}"): -1, ord("]"): -1}.get(b, 0) for b in range(256)]
#: The only ways a JSON string (or key) can decode to a character below U+0020 but tab, CR and
#: LF: strict JSON has none of them raw, so a body without these escapes holds none.
_CONTROL_ESCAPES = (b"\\u00", b"\\b", b"\\f")


def _decoded(body: bytes, max_depth: int) -> Any:
    """`decode_json`'s answer: the same value, and the same JsonRefused (decode_json's own)
    for a body that is not JSON or nested too deep."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return decode_json(body, max_depth)  # raises JsonRefused
    if _nesting(body) > max_depth:
        return decode_json(body, max_depth)  # raises JsonRefused
    return data


def _nesting(body: bytes) -> int:
    """How deep a valid JSON text nests objects and arrays, as `json_depth` counts: strings
    left out, the deepest point of the brackets' running count."""
    if b"\\" in body:  # escaped backslashes and quotes: only the strings' own quotes are left
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(body.split(b'"')[::2]).translate(None, _NOT_A_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _may_hold_control_characters(body: bytes) -> bool:
    return b"\\" in body and any(escape in body for escape in _CONTROL_ESCAPES)


def model(resource: dict[str, Any], path: str) -> Any:
    """The R4B model of a resource of the request; 400 naming where when it is not valid."""
    try:
        return get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, TypeError, KeyError, ValueError, AttributeError, LookupError):
        raise FhirError(
            400, "invalid", f"{path} is not a valid FHIR R4 resource", (path,)
        ) from None


@dataclass
class HookCall:
    """One hook call: the request, the service it is for and the client that sent it."""

    request: Request
    service: services.CdsService
    hook: HookRequest
    client: CdsClient
    now: datetime
    fetched: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def source(self) -> Source:
        return Source(CHANNEL, self.client.iss, self.hook.hook_instance)

    async def answer(self) -> dict[str, Any]:
        ctx = context_of(self.request)
        pack = ctx.pack_for(self.now)
        orders = await self.orders(pack.clozapine_rxnorm.value) if self.service.orders else []
        if self.service.orders and not orders:
            return NO_CARDS  # no clozapine order: nothing to say
        identifiers = await self.subject()
        reads = reads_of(self.request)
        if not self.service.orders and await reads.find_patient(identifiers) is None:
            return NO_CARDS  # patient-view of a patient the clozapine registry does not hold
        labs = await self.prefetched_labs(identifiers)
        try:
            orders = await self.with_prescriber(orders)
        except FhirError:
            await self.take_labs(identifiers, labs)  # taken before the Practitioner is read
            raise
        requests = [o.request for o in orders]
        # the labs on file (the usual case: the EHR sends the recent results every time) and
        # the checks in one read; else the labs are stored first and the checks read after
        checks = await reads.check_hook(identifiers, requests, self.now, labs)
        if checks is None:
            await self.store_labs(identifiers, labs)
            checks = await reads.check_hook(identifiers, requests, self.now)
        assert checks is not None
        cards = self.cards(orders, checks, pack.rationale_reasons.value)
        service_of(self.request).keep_cards([self.kept(c, o, checks) for c, o in cards])
        self.request.app.state.metrics.count_cards(self.service.id, [c.indicator for c, _ in cards])
        return {"cards": [card.card for card, _ in cards]}

    # --- the patient ------------------------------------------------------------------------------

    async def subject(self) -> list[Identifier]:
        """The identifiers the registry may know the patient by."""
        patient = self.hook.prefetch.get(services.PATIENT)
        if patient is None and self.client.fhir_client:
            record = await reads_of(self.request).client_patient(
                self.client.fhir_client, self.hook.patient_id
            )
            if record is not None:
                return list(record.identifiers)
        patient = await self.prefetched(services.PATIENT, required=True)
        assert patient is not None
        return list(self.read("patient", patient, patient_identifiers))

    async def prefetched(self, key: str, required: bool) -> dict[str, Any] | None:
        """A prefetch value, or fetched from the EHR's FHIR server when the EHR sent none (a
        null value or no key); 412 when it is required and cannot be had."""
        given = self.hook.prefetch.get(key)
        if given is not None:
            return given
        if key not in self.fetched:
            self.fetched[key] = await self._fetch(key, required)
        return self.fetched[key]

    async def _fetch(self, key: str, required: bool) -> dict[str, Any] | None:
        template = self.service.prefetch.get(key)
        query = services.filled(template, self.hook.context) if template else None
        problem = None
        if query is None:
            problem = f"the context does not say what {key} to fetch"
        elif not self.hook.fhir_server:
            problem = "no fhirServer was given to fetch it from"
        else:
            http: httpx.AsyncClient = self.request.app.state.cds_http
            try:
                return await fetch(
                    self.client, http, self.hook.fhir_server, self.hook.fhir_authorization, query
                )
            except FetchRefused:
                problem = "this fhirServer is not on the gateway's allow-list for this client"
            except FetchFailed as failed:
                problem = f"the fhirServer did not answer it: {failed}"
        if required:
            raise FhirError(412, "incomplete", f"prefetch {key!r} is needed: {problem}")
        return None

    # --- the orders -------------------------------------------------------------------------------

    async def orders(self, clozapine_rxnorm: list[str]) -> list[HookOrder]:
        """The hook's clozapine orders, as dispenses now (other drugs: no card)."""
        if self.service.hook == "encounter-discharge":
            bundle = await self.prefetched(services.MEDICATIONS, required=True)
            found = bundle_resources(bundle, "prefetch.medications")
        else:
            found = bundle_resources(self.hook.context.get("draftOrders"), "context.draftOrders")
            if self.service.hook == "order-select":
                found = selected(found, self.hook.context.get("selections"))
        orders = []
        for index, (where, resource) in enumerate(found):
            if resource.get("resourceType") != MEDICATION_REQUEST:
                continue
            checked = model(resource, where)
            drug = clozapine_drug(checked, clozapine_rxnorm)
            if drug is None or not self._ordered_now(checked):
                continue
            reference = order_reference(resource, index)
            order = hook_order(reference, resource, checked, drug, self.now)
            orders.append(self._filled_by(order))
        return orders

    def _ordered_now(self, order: Any) -> bool:
        """The discharge hook's medications are the encounter's active orders: those only for
        the stay (category inpatient alone) end with it."""
        if self.service.hook != "encounter-discharge":
            return True
        codes = {
            coding.code
            for concept in order.category or []
            for coding in concept.coding or []
            if coding.system == CATEGORY_SYSTEM
        }
        return codes != {"inpatient"}

    def _filled_by(self, order: HookOrder) -> HookOrder:
        """A discharge medication is a discharge; the EHR's own (hospital) pharmacy fills its
        discharge and inpatient orders when the order names none."""
        request = order.request
        if self.service.hook == "encounter-discharge":
            request = replace(request, discharge=True)
        pharmacy = request.pharmacy_npi
        if not pharmacy and (request.discharge or request.setting == Setting.INPATIENT):
            pharmacy = self.client.pharmacy_npi or ""
        missing = tuple(m for m in order.missing if m != "pharmacy" or not pharmacy)
        return replace(order, request=replace(request, pharmacy_npi=pharmacy), missing=missing)

    async def with_prescriber(self, orders: list[HookOrder]) -> list[HookOrder]:
        """Orders naming no prescriber NPI are the user's (context.userId's Practitioner)."""
        if not any("prescriber" in o.missing for o in orders):
            return orders
        practitioner = await self.prefetched(services.PRACTITIONER, required=False)
        if practitioner is None:
            return orders
        npi = self.read("practitioner", practitioner, practitioner_npi)
        if npi is None:
            return orders
        named = []
        for order in orders:
            if "prescriber" in order.missing:
                order = replace(
                    order,
                    request=replace(order.request, prescriber_npi=npi),
                    missing=tuple(m for m in order.missing if m != "prescriber"),
                )
            named.append(order)
        return named

    # --- the labs ---------------------------------------------------------------------------------

    async def prefetched_labs(self, identifiers: list[Identifier]) -> list[LabResult]:
        """The prefetched results (none are fetched for a patient with no identifiers)."""
        if not identifiers:
            return []
        return self.lab_results(await self.prefetched(services.LABS, required=False))

    async def take_labs(self, identifiers: list[Identifier], results: list[LabResult]) -> None:
        """The prefetched results, through the ordinary lab path: stored once (idempotent);
        nothing is written when every one is on file already."""
        if results and not await reads_of(self.request).labs_on_file(identifiers, results):
            await self.store_labs(identifiers, results)

    async def store_labs(self, identifiers: list[Identifier], results: list[LabResult]) -> None:
        await service_of(self.request).ingest_labs(identifiers, results, self.source, self.now)

    def lab_results(self, bundle: dict[str, Any] | None) -> list[LabResult]:
        readings: Readings = self.request.app.state.cds_readings
        results = []
        for where, resource in bundle_resources(bundle, "prefetch.labs") if bundle else []:
            if resource.get("resourceType") != "Observation":
                continue  # e.g. the OperationOutcome an EHR appends to a search
            result = readings.reading("lab", resource, lambda r, at=where: self._lab_result(r, at))
            if result is not None:
                results.append(result)
        return results

    def read(self, key: str, resource: dict[str, Any], mapping: Callable[[Any], T]) -> T:
        """The prefetched ``key`` resource's R4B model mapped (a 400 naming it when not valid),
        read once per content."""
        readings: Readings = self.request.app.state.cds_readings
        return readings.reading(key, resource, lambda r: mapping(model(r, f"prefetch.{key}")))

    def _lab_result(self, resource: dict[str, Any], where: str) -> LabResult | None:
        ctx = context_of(self.request)
        try:
            checked = model(resource, where)
        except FhirError:
            return None  # one unreadable result does not keep the others from the check
        return read_observation(checked, ctx.lab_pack(), ctx.tz).result

    # --- the cards --------------------------------------------------------------------------------

    def cards(
        self, orders: list[HookOrder], checks: HookChecks, pack_reasons: list[str]
    ) -> list[tuple[OrderCard, HookOrder | None]]:
        ctx = context_of(self.request)
        base = self.request.app.state.settings.public_base_url
        patient_ref = f"Patient/{self.hook.patient_id}"
        made: list[tuple[OrderCard, HookOrder | None]] = []
        for order, check in zip(orders, checks.checks, strict=True):
            decision = check.decision
            assert decision is not None
            source = CardSource(SOURCE_LABEL, decision.rule_pack, decision.rule_pack_version, base)
            card = order_card(
                _uuid(), order, check, checks.status, source, patient_ref,
                self.hook.user_id, pack_reasons, ctx.tz, _uuid,
            )  # fmt: skip
            made.append((card, order))
        if not self.service.orders and checks.status is not None:
            status = checks.status
            source = CardSource(SOURCE_LABEL, status.rule_pack, status.rule_pack_version, base)
            made.append((monitoring_card(_uuid(), status, source, ctx.tz), None))
        return made

    def kept(self, card: OrderCard, order: HookOrder | None, checks: HookChecks) -> dict[str, Any]:
        """What the gateway keeps of a card: feedback names it by uuid."""
        if order is None:
            outcome = "status"
        elif "overrideReasons" in card.card:
            outcome = "rationale_required"  # a prescriber's rationale can resolve it
        else:
            outcome = _OUTCOME[card.indicator]
        pack, _, version = card.card["source"]["topic"]["code"].partition("|")
        return {
            "uuid": card.card["uuid"],
            "service": self.service.id,
            "hook_instance": self.hook.hook_instance,
            "client": self.client.iss,
            "user_id": self.hook.user_id,
            "patient_id": checks.patient_id,
            "order": order.reference if order is not None else None,
            "outcome": outcome,
            "reasons": list(card.reasons),
            "rule_pack": pack,
            "rule_pack_version": version,
            "issued": self.now,
        }


def _uuid() -> str:
    return str(uuid.uuid4())
