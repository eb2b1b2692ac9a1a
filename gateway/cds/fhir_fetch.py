"""What a prefetch template asks for, fetched by the gateway when the EHR sent no prefetch.

CDS Hooks 2.0 lets the service fetch from the request's `fhirServer` with its
`fhirAuthorization`. That bearer token is the EHR's: it goes only to the FHIR servers the CDS
clients file allows for that EHR, and never into an error text or a log.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from gateway.cds.clients import CdsClient

FETCH_TIMEOUT_SECONDS = 5.0
MAX_RESOURCE_BYTES = 4 * 1024 * 1024
FHIR_JSON = "application/fhir+json"


class FetchRefused(Exception):
    """The gateway will not fetch this (not an allowed fhirServer, not a relative query)."""


class FetchFailed(Exception):
    """The fetch was tried and gave nothing usable; the text names the status or problem."""


async def get_json(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], max_bytes: int
) -> Any:
    """GET `url` → its JSON, read at most `max_bytes` within the timeout, no redirect followed.

    FetchFailed says what went wrong ("answered 404", "sent more than 1 MB") without the URL or
    the headers, so that the caller can name the server in its own words.
    """
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
            body = await _bounded_body(http, url, headers, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise FetchFailed(f"did not answer within {FETCH_TIMEOUT_SECONDS:g} s") from None
    except httpx.HTTPError:
        raise FetchFailed("could not be reached") from None
    try:
        return json.loads(body)
    except ValueError:
        raise FetchFailed("sent no JSON") from None


async def _bounded_body(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], max_bytes: int
) -> bytes:
    too_large = FetchFailed(f"sent more than {max_bytes // (1024 * 1024)} MB")
    request = http.build_request("GET", url, headers=headers, timeout=FETCH_TIMEOUT_SECONDS)
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if not response.is_success:
            raise FetchFailed(f"answered {response.status_code}")
        if int(response.headers.get("content-length") or 0) > max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise too_large
        return bytes(body)
    finally:
        await response.aclose()


def _relative_query(query: str) -> str:
    """A FHIR query below the server's base (`Patient/abc`, `Observation?patient=abc`)."""
    path = query.partition("?")[0]
    segments = path.split("/")
    if not path or ":" in segments[0] or any(s in ("", ".", "..") for s in segments):
        raise FetchRefused("a prefetch query must be relative to the fhirServer")
    return query


async def fetch(
    client: CdsClient,
    http: httpx.AsyncClient,
    fhir_server: str,
    authorization: dict[str, Any] | None,
    query: str,
) -> dict[str, Any]:
    """The FHIR resource (often a searchset Bundle) `query` names on the EHR's FHIR server."""
    if not client.may_fetch(fhir_server):
        raise FetchRefused("the gateway does not fetch from this fhirServer (not allow-listed)")
    url = f"{fhir_server.rstrip('/')}/{_relative_query(query)}"
    headers = {"Accept": FHIR_JSON}
    if authorization is not None:
        token = authorization.get("access_token")
        if not isinstance(token, str) or not token:
            raise FetchFailed("fhirAuthorization has no access_token")
        headers["Authorization"] = f"Bearer {token}"
    what = query.partition("?")[0].partition("/")[0]  # the resource type, never the id
    try:
        resource = await get_json(http, url, headers, MAX_RESOURCE_BYTES)
    except FetchFailed as exc:
        raise FetchFailed(f"the FHIR server {exc} (fetching {what})") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FetchFailed(f"the FHIR server sent no FHIR resource (fetching {what})")
    return resource
