"""What a FHIR client notices about searches and the CapabilityStatement (issue 18): absolute
`fullUrl`s and paging links under `public_base_url` (else the request's base), unknown search
parameters refused unless `Prefer: handling=lenient`, and a CapabilityStatement that names its
software, version, start time and implementation guides."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.fhir.capability import IMPLEMENTATION_GUIDES, SITE_EXTENSION, software_version
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_observation import ANC, AT, FHIR
from tests.test_service import MRN, registry

pytestmark = sqlite_only  # answers of the HTTP layer: the database is not their subject

PUBLIC = "https://rems.example.org/gateway"
LENIENT = {"Prefer": "handling=lenient"}
#: One search of every search route, with parameters it takes.
SEARCHES = [
    ("/Observation", {"code": "751-8"}),
    ("/DiagnosticReport", {"code": "58410-2"}),
    ("/Patient", {"identifier": f"{MRN[0].system}|{MRN[0].value}"}),
    ("/Questionnaire", {}),
    ("/QuestionnaireResponse", {"status": "completed"}),
    ("/Task", {"status": "requested"}),
    ("/Subscription", {"status": "active"}),
    ("/Organization", {"type": "pharmacy"}),
    ("/Practitioner", {"certification-status": "certified"}),
    ("/PractitionerRole", {"identifier": "D1"}),
]


@pytest.fixture
def base(service: RemsService, engine: Engine) -> Iterator[str]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine) as url:
        yield url


@pytest.fixture
def fhir(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base + "/fhir") as client:
        yield client


@pytest.fixture
def public(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    """The gateway behind a proxy: `public_base_url` set."""
    run(service.load_registry(registry(), Source("test")))
    with (
        running_app(service, engine, public_base_url=PUBLIC) as url,
        httpx.Client(base_url=url + "/fhir") as client,
    ):
        yield client


def post_ancs(client: httpx.Client, how_many: int) -> None:
    for n in range(how_many):
        body = copy.deepcopy(ANC)
        body["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": f"L{n}"}]
        body["specimen"] = {"identifier": {"system": "urn:acc", "value": f"ACC-{n}"}}
        body["effectiveDateTime"] = f"2022-03-0{n + 1}T08:00:00Z"
        answer = client.post("/Observation", json=body, headers={"Content-Type": FHIR, **AT})
        assert answer.status_code == 201, answer.text


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


# --- the CapabilityStatement -----------------------------------------------------------------


def test_the_capability_statement_names_software_version_start_guides_and_site(
    fhir: httpx.Client, base: str
) -> None:
    statement = fhir.get("/metadata").json()
    assert statement["software"] == {"name": "rems-gateway", "version": software_version()}
    assert software_version() not in ("", "unknown")  # the installed package's
    started = datetime.fromisoformat(statement["date"])
    assert started.tzinfo is not None and started <= datetime.now(started.tzinfo)
    assert fhir.get("/metadata").json()["date"] == statement["date"]  # the start, not now
    assert statement["implementationGuide"] == list(IMPLEMENTATION_GUIDES)
    assert any("medication-rems" in ig for ig in IMPLEMENTATION_GUIDES)
    assert any("subscriptions-backport" in ig for ig in IMPLEMENTATION_GUIDES)
    assert any("smart-app-launch" in ig for ig in IMPLEMENTATION_GUIDES)
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"transaction", "batch"}
    (site,) = [e for e in statement["extension"] if e["url"] == SITE_EXTENSION]
    values = {part["url"]: part for part in site["extension"]}
    assert values["rules"]["valueString"] == "clozapine-rems-2021"
    assert values["timezone"]["valueCode"] == "UTC"
    assert statement["implementation"]["url"] == f"{base}/fhir"


def test_the_capability_statement_is_valid_r4(fhir: httpx.Client) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    CapabilityStatement.model_validate(fhir.get("/metadata").json())


def test_every_declared_search_parameter_is_taken(fhir: httpx.Client) -> None:
    """The CapabilityStatement's searchParams are what the routes take: none is refused as
    unknown (its value may still be wrong for it)."""
    statement = fhir.get("/metadata").json()
    for resource in statement["rest"][0]["resource"]:
        for parameter in resource.get("searchParam", []):
            answer = fhir.get(f"/{resource['type']}", params={parameter["name"]: "x"})
            assert "unknown search parameter" not in answer.text, (resource["type"], answer.text)


# --- absolute URLs and paging ----------------------------------------------------------------


def test_fullurls_and_paging_links_are_absolute_under_the_request_base(
    fhir: httpx.Client, base: str
) -> None:
    post_ancs(fhir, 3)
    first = fhir.get("/Observation", params={"code": "751-8", "_count": 1}).json()
    assert first["total"] == 3
    assert (
        first["entry"][0]["fullUrl"]
        == f"{base}/fhir/Observation/{first['entry'][0]['resource']['id']}"
    )
    first_links = links(first)
    assert first_links["self"] == f"{base}/fhir/Observation?code=751-8&_count=1"
    assert set(first_links) == {"self", "next"}  # no previous page
    second = fhir.get(first_links["next"]).json()
    second_links = links(second)
    assert second_links["next"] == f"{base}/fhir/Observation?code=751-8&_count=1&_offset=2"
    assert second_links["previous"] == f"{base}/fhir/Observation?code=751-8&_count=1"
    last = fhir.get(second_links["next"]).json()
    assert set(links(last)) == {"self", "previous"}
    assert links(last)["previous"].endswith("_offset=1")
    seen = [page["entry"][0]["resource"]["id"] for page in (first, second, last)]
    assert len(set(seen)) == 3


def test_under_a_public_base_url_every_absolute_url_starts_with_it(public: httpx.Client) -> None:
    post_ancs(public, 2)
    found = public.get("/Observation", params={"_count": 1}).json()
    assert found["entry"][0]["fullUrl"].startswith(f"{PUBLIC}/fhir/Observation/")
    assert all(url.startswith(f"{PUBLIC}/fhir/Observation?") for url in links(found).values())
    patients = public.get("/Patient", params={"identifier": f"{MRN[0].system}|{MRN[0].value}"})
    assert patients.json()["entry"][0]["fullUrl"].startswith(f"{PUBLIC}/fhir/Patient/")
    forms = public.get("/Questionnaire").json()
    assert {e["fullUrl"] for e in forms["entry"]} == {
        f"{PUBLIC}/fhir/Questionnaire/clozapine-psf",
        f"{PUBLIC}/fhir/Questionnaire/clozapine-enrollment",
    }
    assert public.get("/metadata").json()["implementation"]["url"] == f"{PUBLIC}/fhir"


def test_a_transaction_response_has_absolute_fullurls(public: httpx.Client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": ANC, "request": {"method": "POST", "url": "Observation"}}],
    }
    answer = public.post("", json=bundle, headers={"Content-Type": FHIR, **AT}).json()
    assert answer["type"] == "transaction-response"
    assert answer["entry"][0]["fullUrl"].startswith(f"{PUBLIC}/fhir/Observation/")


# --- unknown search parameters ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "params"), SEARCHES)
def test_an_unknown_search_parameter_is_400_naming_it(
    fhir: httpx.Client, path: str, params: dict[str, str]
) -> None:
    answer = fhir.get(path, params={**params, "colour": "blue"})
    assert answer.status_code == 400, answer.text
    (issue,) = answer.json()["issue"]
    assert issue["code"] == "not-supported"
    assert "unknown search parameter colour" in issue["diagnostics"]
    assert "Prefer: handling=lenient" in issue["diagnostics"]
    assert issue["expression"] == ["colour"]
    assert "blue" not in answer.text


@pytest.mark.parametrize(("path", "params"), SEARCHES)
def test_with_lenient_handling_unknown_parameters_are_ignored_and_not_in_self(
    fhir: httpx.Client, path: str, params: dict[str, str]
) -> None:
    strict = fhir.get(path, params=params)
    assert strict.status_code == 200, strict.text
    lenient = fhir.get(
        path, params={**params, "colour": "blue", "_pretty": "true"}, headers=LENIENT
    )
    assert lenient.status_code == 200, lenient.text
    assert lenient.json()["total"] == strict.json()["total"]
    assert links(lenient.json())["self"] == links(strict.json())["self"]
    assert "colour" not in links(lenient.json())["self"]


def test_a_modifier_the_search_does_not_take_is_unknown(fhir: httpx.Client) -> None:
    answer = fhir.get("/Observation", params={"code:text": "neutrophils"})
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["code:text"]
    assert fhir.get("/Observation", params={"subject:identifier": "urn:x|1"}).status_code == 200


def test_several_unknown_parameters_are_all_named(fhir: httpx.Client) -> None:
    answer = fhir.get("/Task", params={"_elements": "id", "performer": "x", "status": "requested"})
    assert answer.status_code == 400
    issue = answer.json()["issue"][0]
    assert "unknown search parameters _elements, performer" in issue["diagnostics"]
    assert issue["expression"] == ["_elements", "performer"]


def test_strict_handling_is_the_default_and_can_be_asked_for(fhir: httpx.Client) -> None:
    strict = {"Prefer": "return=representation, handling=strict"}
    assert fhir.get("/Patient", params={"name": "Doe"}, headers=strict).status_code == 400
    both = {"Prefer": "return=minimal; handling=lenient"}
    found = fhir.get("/Subscription", params={"name": "x"}, headers=both)
    assert found.status_code == 200


def test_subject_searches_as_patient_does(fhir: httpx.Client, service: RemsService) -> None:
    post_ancs(fhir, 1)
    patient_id = fhir.get(
        "/Patient", params={"identifier": f"{MRN[0].system}|{MRN[0].value}"}
    ).json()["entry"][0]["resource"]["id"]
    by_patient = fhir.get("/Observation", params={"patient": patient_id}).json()
    by_subject = fhir.get("/Observation", params={"subject": f"Patient/{patient_id}"}).json()
    assert by_patient["total"] == by_subject["total"] == 1
    both = fhir.get("/Observation", params={"patient": patient_id, "subject": "someone-else"})
    assert both.status_code == 400


def test_questionnaires_are_searched_by_url(fhir: httpx.Client) -> None:
    psf = fhir.get("/Questionnaire/clozapine-psf").json()
    found = fhir.get("/Questionnaire", params={"url": psf["url"]}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["clozapine-psf"]
    versioned = fhir.get("/Questionnaire", params={"url": f"{psf['url']}|{psf['version']}"})
    assert versioned.json()["total"] == 1
    assert fhir.get("/Questionnaire", params={"url": f"{psf['url']}|99"}).json()["total"] == 0
    assert fhir.get("/Questionnaire").json()["total"] == 2
