"""The dashboard's server side (both backends): the login and its cookie, CSRF on changes, no
open redirect, no secret shown, and a 10,000-request batch read in a few paged queries."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, insert

from api.session import COOKIE, CSRF_HEADER, csrf_value
from models.base import utcnow
from models.records import Batch, BatchSource, Event, ServerRequest
from models.states import RequestState
from models.webhooks import WebhookTarget
from tests.api.helpers import TOKEN, fail, submit
from tests.factories import batch, server

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def ui(make_client):
    return make_client(api_token=TOKEN)


def log_in(client, token: str = TOKEN, next_path: str = "/ui"):
    return client.post(
        "/ui/login", content=f"token={token}&next={next_path}", headers=FORM, follow_redirects=False
    )


def test_pages_need_the_token_and_the_login_sets_a_derived_cookie(ui):
    page = ui.get("/ui/batches/" + str(uuid.uuid4()), follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/ui/login?next=/ui/batches/")
    fragment = ui.get("/ui/fragments/batches", headers={"X-BMS-Fragment": "1"})
    assert fragment.status_code == 401
    assert ui.get("/ui", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

    refused = log_in(ui, "wrong-token")
    assert refused.status_code == 401 and "not the API" in refused.text
    assert COOKIE not in refused.cookies

    accepted = log_in(ui)
    assert accepted.status_code == 303 and accepted.headers["location"] == "/ui"
    cookie = accepted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie  # derived from the token, not the token
    assert ui.get("/ui").status_code == 200
    assert ui.get("/v1/batches").status_code == 200  # the API takes the session too


def test_the_login_never_redirects_off_the_dashboard(ui):
    for target in ("https://evil.example/", "//evil.example/ui", "/v1/batches"):
        assert log_in(ui, next_path=target).headers["location"] == "/ui"


def test_a_change_through_the_cookie_needs_the_csrf_header(ui):
    log_in(ui)
    batch_id = submit(ui.__class__(ui.app, headers={"Authorization": f"Bearer {TOKEN}"}))[
        "batch_id"
    ]

    forged = ui.post(f"/v1/batches/{batch_id}/cancel")
    wrong = ui.post(f"/v1/batches/{batch_id}/cancel", headers={CSRF_HEADER: "guess"})
    allowed = ui.post(f"/v1/batches/{batch_id}/cancel", headers={CSRF_HEADER: csrf_value(TOKEN)})

    assert (forged.status_code, wrong.status_code, allowed.status_code) == (401, 401, 200)
    assert len(allowed.json()["cancelled"]) == 1


def test_an_open_api_serves_the_dashboard_without_login(client):
    submitted = submit(client, "one", batch_name="open")
    page = client.get(f"/ui/batches/{submitted['batch_id']}")
    assert page.status_code == 200 and "open" in page.text
    assert "Log out" not in page.text


def test_batch_and_request_pages_show_failures_and_hide_the_secret(client, database):
    secret = "never-shown-secret-0123456789"
    body = batch(
        server(name="a"),
        server(name="b"),
        notify={"url": "https://hooks.example.com/x", "secret": secret},
    )
    submitted = client.post("/v1/batches", json=body).json()
    failed_id = submitted["requests"][1]["id"]
    fail(database.sessions, failed_id)

    page = client.get(f"/ui/batches/{submitted['batch_id']}")
    live = client.get(f"/ui/batches/{submitted['batch_id']}/live")
    only_failed = client.get(f"/ui/batches/{submitted['batch_id']}/requests?state=FAILED")
    request_page = client.get(f"/ui/requests/{failed_id}")

    assert all(r.status_code == 200 for r in (page, live, only_failed, request_page))
    assert "BMS.0001" in live.text and "simulated failure" in live.text
    assert 'aria-valuenow="50"' in live.text  # one of two settled
    assert "hooks.example.com" in page.text and "signed" in page.text
    assert secret not in page.text + live.text + request_page.text
    assert only_failed.text.count("data-request=") == 1
    assert "simulated failure" in request_page.text and "create failed" in request_page.text
    assert client.get(f"/ui/batches/{uuid.uuid4()}").status_code == 404
    assert client.get("/ui/batches/not-a-uuid").status_code == 422
    assert client.get("/ui/static/ui.js").status_code == 200


def large_batch(database, size: int = 10_000) -> uuid.UUID:
    """A batch of ``size`` requests, most settled with their final event, written in bulk."""
    batch_id = uuid.uuid4()
    start = utcnow() - timedelta(minutes=30)
    states = [RequestState.ACTIVE] * 6 + [RequestState.FAILED, RequestState.BUILDING] * 2
    requests, events = [], []
    for position in range(size):
        state = states[position % len(states)]
        request_id = uuid.uuid4()
        requests.append(
            {
                "id": request_id,
                "batch_id": batch_id,
                "position": position,
                "name": f"big-{position:05d}",
                "spec": {"name": f"big-{position:05d}"},
                "state": state,
                "attempt": 1,
                "fence": 0,
                "last_error_code": f"BMS.{position % 3:04d}"
                if state is RequestState.FAILED
                else None,
                "last_error_message": "no capacity" if state is RequestState.FAILED else None,
                "created_at": start,
                "updated_at": start,
            }
        )
        if state is not RequestState.BUILDING:
            at = start + timedelta(seconds=position * 0.1)
            events.append(
                {
                    "request_id": request_id,
                    "from_state": RequestState.TAGGING,
                    "to_state": state,
                    "at": at,
                }
            )
    with database.sessions() as session:
        session.add(
            Batch(id=batch_id, name="ten-thousand", source=BatchSource.API, created_at=start)
        )
        session.flush()
        session.add(WebhookTarget(batch_id=batch_id, url="https://hooks.example.com/big"))
        session.execute(insert(ServerRequest), requests)
        session.execute(insert(Event), events)
        session.commit()
    return batch_id


def test_a_ten_thousand_request_batch_is_read_in_a_few_paged_queries(client, database):
    batch_id = large_batch(database)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        page = client.get(f"/ui/batches/{batch_id}")
        page_statements = len(statements)
        live = client.get(f"/ui/batches/{batch_id}/live")
        later = client.get(f"/ui/batches/{batch_id}/requests?offset=9900&state=ACTIVE")
        listing = client.get("/ui")
    finally:
        event.remove(database.engine, "before_cursor_execute", count)

    assert page.status_code == live.status_code == later.status_code == listing.status_code == 200
    assert page.text.count("data-request=") == 100  # one page, not 10,000 rows
    assert 'aria-valuenow="80"' in live.text  # 8,000 of 10,000 settled
    assert "6000" in live.text and "2000" in live.text  # ACTIVE, FAILED (grouped in SQL)
    assert live.text.count('<tr><td class="mono code">') == 3  # three error codes
    assert later.text.count("data-request=") == 0  # only 6,000 ACTIVE: past the end
    assert page_statements <= 15, statements
    # The chart: counted per slice of time in SQL, at most two points per slice.
    points = live.text.split('<polyline points="')[1].split('"')[0].split()
    assert 4 <= len(points) <= 2 * 60 + 2
    assert points[-1].endswith(",29.0")  # 80% settled: y = 125 - 0.8 * 120
    # No statement loads the whole batch: every one over server_requests is grouped or paged.
    for statement in statements:
        if "FROM server_requests" in statement and "GROUP BY" not in statement:
            assert "LIMIT" in statement or "server_requests.id =" in statement, statement
