"""The operator console in a real browser (docs/contracts.md §8): Playwright driving Debian's
Chromium (/usr/bin/chromium; `.ci/run` installs it) against a real gateway app on a loopback port
and a real database. Under CI a missing browser fails these tests; elsewhere they are skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import Engine

from gateway.app.service import RemsService
from tests.conftest import committed, sqlite_only
from tests.console_data import FAMILY, HOSTILE, TOKEN, Seeded, seed
from tests.http_server import running_app

pytestmark = [sqlite_only, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"no browser at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the console's browser tests")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def console(service: RemsService, engine: Engine) -> Iterator[tuple[str, Seeded]]:
    # Playwright's sync API keeps an event loop running in this thread: the seeding's
    # asyncio.run goes to a thread of its own.
    with ThreadPoolExecutor(1) as thread:
        seeded = thread.submit(seed, service).result()
    with running_app(service, engine, admin_token=TOKEN) as base:
        yield base, seeded


@pytest.fixture
def page(browser: Browser, console: tuple[str, Seeded]) -> Iterator[Page]:
    context = browser.new_context(base_url=console[0])
    tab = context.new_page()
    tab.set_default_timeout(5000)
    yield tab
    context.close()


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.goto("/console/messages")  # redirected to the sign-in, and back after it
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")


def test_sign_in_refuses_a_wrong_token_and_opens_the_page_asked_for(page: Page) -> None:
    sign_in(page, "wrong")
    assert page.locator(".problem").inner_text().startswith("That token does not sign in")
    assert page.context.cookies() == []
    sign_in(page)
    assert page.url.endswith("/console/messages")
    assert page.get_by_text("Signed in as admin-token").is_visible()
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"


def test_messages_filter_and_a_message_with_its_segments_and_ack(page: Page) -> None:
    sign_in(page)
    assert page.locator("table.messages tbody tr").count() == 4
    page.select_option("select[name=disposition]", "unmatched")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table.messages tbody tr")
    assert rows.count() == 1 and "C-4" in rows.inner_text()
    assert "disposition=unmatched" in page.url
    page.click("text=C-4")
    first = page.locator("table.hl7").first
    assert first.locator("tr", has_text="MSH-10").locator("td.value").inner_text() == "C-4"
    assert (
        first.locator("tr", has_text="PID-3")
        .locator("td.value")
        .inner_text()
        .startswith("NOBODY77")
    )
    ack = page.locator("table.hl7").nth(1)
    assert ack.locator("tr", has_text="MSA-1").locator("td.value").inner_text() == "AA"
    assert ack.locator("tr", has_text="MSA-2").locator("td.value").inner_text() == "C-4"


def test_linking_a_held_result_files_it(
    page: Page, console: tuple[str, Seeded], service: RemsService
) -> None:
    _, seeded = console
    sign_in(page)
    page.click("nav >> text=Review queue")
    page.click(f"a[href='/console/review/{seeded.held}']")
    assert page.get_by_role("link", name="LIS|GH#C-4").is_visible()  # its message's page
    page.fill("form.link input[name=patient]", seeded.patient)
    page.click("form.link button[type=submit]")
    assert page.locator("p.done").inner_text().startswith("Linked")
    assert page.locator(".item-status").inner_text() == "linked"
    held = committed(service, lambda store: store.review_item(seeded.held))
    assert held["status"] == "linked" and held["patient_id"] == seeded.patient
    assert held["resolved_by"] == "admin-token"
    ancs = committed(service, lambda store: store.anc_results(seeded.patient))
    assert 2200 in [a.anc for a in ancs]


def test_the_patient_chart_draws_each_anc(page: Page, console: tuple[str, Seeded]) -> None:
    _, seeded = console
    sign_in(page)
    page.click("nav >> text=Patients")
    page.fill("input[name=identifier]", "MRN4711")
    page.click("form.filters button[type=submit]")
    assert page.url.endswith(f"/console/patients/{seeded.patient}")
    assert FAMILY in page.locator("h1").inner_text()
    chart = page.locator("svg.anc-chart")
    assert chart.is_visible()
    assert chart.locator("circle").count() == seeded.ancs == 4
    assert chart.locator("rect.band").count() == 4  # normal, mild, moderate, severe
    assert chart.locator("path.psf").count() == 1  # the enrollment PSF
    assert chart.locator(f"rect.decision-{seeded.outcome}").count() == 1
    assert page.locator("table.ancs tbody tr").count() == seeded.ancs


def test_a_script_in_a_message_is_shown_as_text(page: Page, console: tuple[str, Seeded]) -> None:
    _, seeded = console
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page)
    page.goto(f"/console/messages/{seeded.hostile_message}")
    cell = page.locator("table.hl7").first.locator("tr", has_text="PID-5").locator("td.value")
    assert cell.inner_text() == f"{HOSTILE}^JANE"
    assert cell.is_visible()
    assert page.locator("main script").count() == 0
    page.wait_for_timeout(200)
    assert dialogs == []
