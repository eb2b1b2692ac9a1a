"""read and vread, the same for every stored resource type.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations, which name
the closure's ``resource_type``, so they must be evaluated where they are written."""

from typing import Annotated

from fastapi import APIRouter, Request

from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirResponse, check_format
from gateway.fhir.resources import read_response, reads_of
from gateway.fhir.search import MAX_INT


def add_reads(router: APIRouter, resource_type: str) -> None:
    """`GET /<Type>/{id}` and `GET /<Type>/{id}/_history/{version}` on ``router``."""

    async def read(
        request: Request,
        resource_id: str,
        _: Annotated[Principal, requires(resource_type, "read")],
    ) -> FhirResponse:
        check_format(request)
        stored = await reads_of(request).resource(resource_type, resource_id)
        return read_response(stored, resource_type, resource_id)

    async def vread(
        request: Request,
        resource_id: str,
        version_id: int,
        _: Annotated[Principal, requires(resource_type, "read")],
    ) -> FhirResponse:
        check_format(request)
        if not 1 <= version_id <= MAX_INT:  # no such version: the store holds none beyond
            return read_response(None, resource_type, f"{resource_id}/_history/{version_id}")
        stored = await reads_of(request).resource(resource_type, resource_id, version_id)
        return read_response(stored, resource_type, f"{resource_id}/_history/{version_id}")

    name = resource_type[0].lower() + resource_type[1:]
    router.add_api_route(
        f"/{resource_type}/{{resource_id}}", read, methods=["GET"], name=f"read_{name}"
    )
    router.add_api_route(
        f"/{resource_type}/{{resource_id}}/_history/{{version_id}}",
        vread,
        methods=["GET"],
        name=f"vread_{name}",
    )
