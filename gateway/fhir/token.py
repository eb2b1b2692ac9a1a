"""`POST /auth/token` (SMART Backend Services) and `/.well-known/smart-configuration`.

The client authenticates with a JWT it signed (RFC 7523, `private_key_jwt`): `iss` = `sub` =
its client_id, `aud` = this token URL, `exp` at most five minutes ahead, a `jti` never seen
before. This is OAuth, not FHIR: errors are RFC 6749 §5.2 JSON bodies, not OperationOutcomes.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.fhir.http import FhirError
from gateway.fhir.openapi import OUTCOME_SCHEMA
from gateway.fhir.scopes import granted_scopes
from gateway.fhir.smart import CLOCK_SKEW_SECONDS, TOKEN_PATH, SmartBackendAuth
from gateway.fhir.smart_clients import ClientKey, SmartClient

router = APIRouter(tags=["SMART"])

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
MAX_ASSERTION_SECONDS = 300
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `{"error", "error_description"}` with 400 or 401."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.status = 401 if error == "invalid_client" else 400

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": str(self)}
        return JSONResponse(body, self.status, headers=NO_STORE)


def smart_auth(request: Request) -> SmartBackendAuth:
    auth = request.app.state.fhir_auth
    if not isinstance(auth, SmartBackendAuth):
        raise OAuthError("invalid_client", "this gateway issues no tokens (--auth development)")
    return auth


async def form_parameters(request: Request) -> dict[str, str]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM:
        raise OAuthError("invalid_request", f"send the parameters as {FORM}")
    try:
        pairs = parse_qsl(
            (await request.body()).decode("ascii"), keep_blank_values=True, strict_parsing=True
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not a valid form") from None
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # RFC 6749 §3.2
        raise OAuthError("invalid_request", f"parameter given more than once: {repeated[0]}")
    return dict(pairs)


def client_of(auth: SmartBackendAuth, assertion: str) -> SmartClient:
    """The client the (not yet verified) assertion names as its issuer."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "client_assertion is not a JWT") from None
    client_id = claims.get("iss")
    client = auth.clients.get(client_id) if isinstance(client_id, str) else None
    if client is None:
        raise OAuthError("invalid_client", "the assertion's iss is not a registered client")
    return client


def candidate_keys(client: SmartClient, header: dict[str, Any]) -> list[ClientKey]:
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise OAuthError("invalid_client", "the assertion must be signed with RS384 or ES384")
    if "jku" in header or "jwk" in header or "x5u" in header:
        raise OAuthError("invalid_client", "keys are taken from the clients file only")
    kid = header.get("kid")
    keys = [k for k in client.public_keys() if k.algorithm == header["alg"]]
    return [k for k in keys if kid is None or k.kid in (None, kid)]


def verified_claims(client: SmartClient, assertion: str, token_url: str) -> dict[str, Any]:
    """The assertion's claims once its signature, iss, sub, aud, exp and jti are checked."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "client_assertion is not a JWT") from None
    for key in candidate_keys(client, header):
        try:
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[key.algorithm],
                audience=token_url,
                issuer=client.client_id,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise OAuthError("invalid_client", "the assertion expired") from None
        except jwt.InvalidAudienceError:
            raise OAuthError("invalid_client", f"the assertion's aud must be {token_url}") from None
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"the assertion is not valid: {exc}") from None
        return _checked(client, claims)
    raise OAuthError("invalid_client", "the assertion's signature does not match the client's keys")


def _checked(client: SmartClient, claims: dict[str, Any]) -> dict[str, Any]:
    if claims["sub"] != client.client_id:
        raise OAuthError("invalid_client", "the assertion's sub must be its iss (the client_id)")
    if claims["exp"] > time.time() + MAX_ASSERTION_SECONDS + CLOCK_SKEW_SECONDS:
        raise OAuthError("invalid_client", "the assertion's exp is more than five minutes ahead")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise OAuthError("invalid_client", "the assertion needs a jti")
    return claims


def requested_scopes(parameters: dict[str, str], client: SmartClient) -> list[str]:
    """Requested ∩ allowed; nothing in common is invalid_scope."""
    requested = parameters.get("scope", "").split()
    if not requested:
        raise OAuthError("invalid_scope", "scope is required (e.g. system/Observation.cru)")
    granted = granted_scopes(requested, client.scopes)
    if not granted:
        raise OAuthError("invalid_scope", "none of the requested scopes is allowed to this client")
    return granted


def authenticated_client(
    auth: SmartBackendAuth, parameters: dict[str, str], token_url: str
) -> SmartClient:
    if parameters.get("grant_type") != CLIENT_CREDENTIALS:
        raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
    if parameters.get("client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
    assertion = parameters.get("client_assertion")
    if not assertion:
        raise OAuthError("invalid_request", "client_assertion is required")
    client = client_of(auth, assertion)
    if parameters.get("client_id", client.client_id) != client.client_id:
        raise OAuthError("invalid_client", "client_id is not the assertion's iss")
    claims = verified_claims(client, assertion, token_url)
    if not auth.replays.first_use(client.client_id, claims["jti"], claims["exp"]):
        raise OAuthError("invalid_client", "this assertion (its jti) was already used")
    return client


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
TOKEN_ANSWER = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["bearer"]},
        "expires_in": {"type": "integer", "maximum": 300},
        "scope": {"type": "string"},
    },
}
TOKEN_REQUEST = {
    "type": "object",
    "required": ["grant_type", "client_assertion_type", "client_assertion", "scope"],
    "properties": {
        "grant_type": {"type": "string", "enum": [CLIENT_CREDENTIALS]},
        "client_assertion_type": {"type": "string"},
        "client_assertion": {"type": "string"},
        "scope": {"type": "string"},
    },
}
CONFIGURATION = {"type": "object", "required": ["token_endpoint"]}


@router.post(
    TOKEN_PATH,
    responses={
        200: _json(TOKEN_ANSWER, "An access token"),
        400: _json(OAUTH_ERROR, "RFC 6749 §5.2 error"),
        401: _json(OAUTH_ERROR, "The client could not be authenticated"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": TOKEN_REQUEST}},
        }
    },
)
async def token(request: Request) -> JSONResponse:
    """client_credentials with a signed JWT assertion → a bearer access token (≤ 300 s)."""
    try:
        auth = smart_auth(request)
        parameters = await form_parameters(request)
        client = authenticated_client(auth, parameters, auth.token_endpoint(request))
        scopes = requested_scopes(parameters, client)
    except OAuthError as exc:
        return exc.response()
    issued = auth.issue(client, scopes)
    body = {
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "scope": " ".join(issued.scopes),
    }
    return JSONResponse(body, 200, headers=NO_STORE)


# The 404 of the discovery document outside /fhir: the gateway's plain error body.
NOT_ENABLED = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def smart_configuration(request: Request) -> JSONResponse:
    try:
        auth = smart_auth(request)
    except OAuthError:
        return JSONResponse({"error": "not_found", "detail": "SMART is not enabled"}, 404)
    scopes = sorted({scope for client in auth.clients.values() for scope in client.scopes})
    return JSONResponse(
        {
            "token_endpoint": auth.token_endpoint(request),
            "grant_types_supported": [CLIENT_CREDENTIALS],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "scopes_supported": scopes,
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
    )


@router.get(
    "/.well-known/smart-configuration",
    responses={
        200: _json(CONFIGURATION, "SMART configuration"),
        404: _json(NOT_ENABLED, "SMART is not enabled"),
    },
)
async def well_known(request: Request) -> JSONResponse:
    """SMART discovery (also under the FHIR base, where clients look for it)."""
    return smart_configuration(request)


@router.get(
    "/fhir/.well-known/smart-configuration",
    responses={
        200: _json(CONFIGURATION, "SMART configuration"),
        404: {
            "description": "SMART is not enabled",
            "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA}},
        },
    },
)
async def well_known_under_fhir(request: Request) -> JSONResponse:
    if not isinstance(request.app.state.fhir_auth, SmartBackendAuth):
        raise FhirError(404, "not-found", "SMART is not enabled (--auth development)")
    return smart_configuration(request)
