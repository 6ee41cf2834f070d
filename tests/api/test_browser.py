"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a running
stack (the API served over HTTP by ``python -m api``, real workers, Redis, the simulator).

Screenshots go to ``test-artefacts/browser/`` (ignored by git). ``make test`` installs
chromium when it is missing and it runs as root; without it this test is skipped, except
under CI, where it fails.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import requests

from bmsctl.processes import ManagedProcess, free_port
from models.db import session_scope
from models.records import ServerRequest
from models.states import RequestState
from tests.api.helpers import TOKEN
from tests.factories import batch, server

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "browser"
WAIT_MS = 90_000
PROGRESS = "() => +document.querySelector('#progress').getAttribute('aria-valuenow')"


@pytest.fixture
def chromium_page():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make test` installs it (apt-get, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        yield page
        browser.close()


@pytest.fixture
def served_api(stack_factory, tmp_path):
    """A stack whose simulated jobs take seconds (so progress can be watched), and its API."""
    stack = stack_factory(job_seconds=(2.0, 4.0))
    stack.start_worker("all", concurrency=4)
    port = free_port()
    env = {**stack.env, "BMS_API_TOKEN": TOKEN, "BMS_API_PORT": str(port)}
    api = ManagedProcess("api", [sys.executable, "-m", "api"], env, tmp_path / "api.log")
    stack.workers.append(api)
    base = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {TOKEN}"

    def answers() -> bool:
        try:
            return http.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    stack.wait_for(answers, 60, "the API to answer")
    return stack, base, http


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def test_dashboard_shows_progress_failures_and_cancels(served_api, chromium_page):
    stack, base, http = served_api
    page = chromium_page

    # The dashboard needs the API's token, like the API.
    page.goto(f"{base}/ui")
    assert page.url.startswith(f"{base}/ui/login")
    page.fill("#token", "not-the-token")
    page.click("#login")
    assert "not the API's token" in page.text_content("#login-error")
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(f"{base}/ui")

    # A fixed IP outside its subnet: the cloud refuses that create (the preflight cannot tell).
    outside = {"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1", "ip_address": "10.9.9.9"}
    body = batch(
        server(name="web", count=5), server(name="odd", nics=[outside]), name="browser-rack"
    )
    submitted = http.post(f"{base}/v1/batches", json=body)
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["batch_id"]

    # The list shows the new batch (live, without a reload).
    page.wait_for_selector(f"tr[data-batch='{batch_id}']")
    page.click(f"tr[data-batch='{batch_id}'] a")
    page.wait_for_url(f"{base}/ui/batches/{batch_id}")

    # The bar moves: seen part way, then at 100% through the live refresh alone.
    page.wait_for_function(f"() => {{ const v = ({PROGRESS})(); return v > 0 && v < 100; }}")
    part_way = page.evaluate(f"({PROGRESS})()")
    shot(page, "batch-in-progress")
    page.wait_for_function(f"() => ({PROGRESS})() === 100")
    assert 0 < part_way < 100
    assert page.text_content("#percent").strip() == "100%"
    shot(page, "batch-done")

    # The failed request: its code and message, grouped, then on its own page.
    failed = [r for r in stack.requests(uuid.UUID(batch_id)) if r.state is RequestState.FAILED]
    assert [r.name for r in failed] == ["odd"]
    code, message = failed[0].last_error_code, failed[0].last_error_message
    assert code and message
    failures = page.text_content("#failures")
    assert code in failures and message in failures
    page.click(f"tr[data-request='{failed[0].id}'] a")
    page.wait_for_url(f"{base}/ui/requests/{failed[0].id}")
    detail = page.text_content("main")
    assert code in detail and message in detail and "FAILED" in detail
    shot(page, "request-failed")

    # Cancel, with its confirmation, takes effect on the page and in the database. The workers
    # are stopped first, so that no request can finish before the button is pressed.
    for worker in stack.workers:
        if worker.name != "api":
            worker.stop()
    slow = http.post(
        f"{base}/v1/batches", json=batch(server(name="slow", count=3), name="to-cancel")
    )
    slow_id = slow.json()["batch_id"]
    page.goto(f"{base}/ui/batches/{slow_id}")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click("#cancel")
    # A refresh fetched before the cancel may land after it: wait for the count, whatever.
    page.wait_for_function(
        "() => { const e = document.querySelector(\"#counts li[data-state='CANCELLED'] strong\");"
        " return e !== null && e.textContent === '3'; }"
    )
    assert dialogs and "Cancel every unfinished request of to-cancel" in dialogs[0]
    assert "3 request(s) cancelled" in page.text_content("#flash")
    with session_scope(stack.sessions) as session:
        states = {
            r.state for r in session.query(ServerRequest).filter_by(batch_id=uuid.UUID(slow_id))
        }
    assert states == {RequestState.CANCELLED}
    shot(page, "batch-cancelled")

    page.goto(f"{base}/ui")
    page.wait_for_selector("#quota table")
    shot(page, "batches")
