"""POST /v1/batches/{id}/teardown, and the 409 of an Idempotency-Key reused with another body.

On the database alone: the teardown's chains wait in Redis (no worker here); the rows show
which requests a teardown took and which it left, and why.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from api.dashboard import BAR_ORDER
from api.session import CSRF_HEADER, csrf_value
from models.canonical import batch_digest, digest_body
from models.db import session_scope
from models.records import ServerRequest, transition
from models.spec import parse_batch
from models.states import RequestState
from tests.api.helpers import TOKEN, fail, submit
from tests.api.test_ui import log_in
from tests.factories import batch, server


def states(client, batch_id: str) -> list[str]:
    return [r["state"] for r in client.get(f"/v1/batches/{batch_id}").json()["requests"]]


def make_active(sessions, request_id: str, server_id: str) -> None:
    with session_scope(sessions) as session:
        request = session.get(ServerRequest, uuid.UUID(request_id))
        for state in (RequestState.CREATING, RequestState.BUILDING, RequestState.TAGGING):
            transition(session, request, state)
        request.server_id = server_id
        transition(session, request, RequestState.ACTIVE)


def test_teardown_takes_the_requests_with_a_server_and_says_why_it_left_the_others(
    client, database
):
    submitted = submit(client, "a", "b", "c")
    ids = [r["id"] for r in submitted["requests"]]
    make_active(database.sessions, ids[0], "srv-a")
    fail(database.sessions, ids[1])  # failed at create: no server

    response = client.post(f"/v1/batches/{submitted['batch_id']}/teardown")

    assert response.status_code == 200
    assert response.json() == {
        "batch_id": submitted["batch_id"],
        "tearing_down": [ids[0]],
        "skipped": [
            {"id": ids[1], "reason": "has no server"},
            {"id": ids[2], "reason": "PENDING: cancel it first"},
        ],
    }
    assert states(client, submitted["batch_id"]) == ["TEARING_DOWN", "FAILED", "PENDING"]
    detail = client.get(f"/v1/requests/{ids[0]}").json()
    assert detail["events"][-1]["detail"] == "teardown of server srv-a"
    # Again: nothing is started twice.
    again = client.post(f"/v1/batches/{submitted['batch_id']}/teardown").json()
    assert again["tearing_down"] == []
    assert again["skipped"][0] == {"id": ids[0], "reason": "already tearing down"}


def test_teardown_of_an_unknown_batch_is_404(client):
    response = client.post(f"/v1/batches/{uuid.uuid4()}/teardown")

    assert response.status_code == 404


def test_the_same_key_with_another_body_is_409_with_both_digests(client, row_counts):
    first_body = batch(server(name="a"))
    other_body = batch(server(name="a"), server(name="b"))
    headers = {"Idempotency-Key": "rack-a-2026-11-27"}
    first = client.post("/v1/batches", json=first_body, headers=headers)
    before = row_counts()

    response = client.post("/v1/batches", json=other_body, headers=headers)

    assert response.status_code == 409
    problem = response.json()
    assert problem["batch_id"] == first.json()["batch_id"]
    assert problem["stored_digest"] == batch_digest(parse_batch(first_body))
    assert problem["submitted_digest"] == batch_digest(parse_batch(other_body))
    assert problem["stored_digest"] in problem["detail"]
    assert problem["submitted_digest"] in problem["detail"]
    assert row_counts() == before


def test_the_same_key_with_another_notify_is_409(client, row_counts):
    # Where the batch's webhooks go is part of what was asked: another URL is another batch.
    headers = {"Idempotency-Key": "rack-b-2026-11-27"}
    first_body = {**batch(server(name="a")), "notify": {"url": "https://hooks.example/a"}}
    other_body = {**first_body, "notify": {"url": "https://hooks.example/b"}}
    client.post("/v1/batches", json=first_body, headers=headers)
    before = row_counts()

    response = client.post("/v1/batches", json=other_body, headers=headers)

    assert response.status_code == 409
    assert row_counts() == before


def test_the_digest_shows_whether_a_secret_is_set_never_the_secret():
    secret = "s3cret-of-sixteen-chars"
    spec = parse_batch({**batch(server(name="a")), "notify": {"url": "https://h.example/x",
                                                              "secret": secret}})  # fmt: skip
    body = digest_body(spec)

    assert body["notify"] == {"url": "https://h.example/x", "request_events": False,
                              "secret": "set"}  # fmt: skip
    assert secret not in json.dumps(body)
    unsigned = parse_batch({**batch(server(name="a")), "notify": {"url": "https://h.example/x"}})
    assert batch_digest(spec) != batch_digest(unsigned)


def test_the_same_batch_written_another_way_is_a_replay(client):
    # Defaults merged, keys in another order: the canonical body, and so the digest, are equal.
    explicit = batch(server(name="a"), name="rack")
    common = {k: v for k, v in server().items() if k != "name"}
    with_defaults = {"servers": [{"name": "a"}], "defaults": common, "name": "rack"}
    headers = {"Idempotency-Key": "same-batch"}

    first = client.post("/v1/batches", json=explicit, headers=headers)
    replay = client.post("/v1/batches", json=dict(reversed(with_defaults.items())), headers=headers)

    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["batch_id"] == first.json()["batch_id"]


def test_the_digest_is_sha256_of_the_sorted_canonical_body():
    spec = parse_batch(batch(server(name="a")))
    body = {"name": spec.name, "servers": [s.model_dump(mode="json", exclude_none=True)
                                            for s in spec.servers]}  # fmt: skip
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert batch_digest(spec) == hashlib.sha256(text.encode()).hexdigest()


# -- the dashboard and /metrics ---------------------------------------------------------------


def test_the_dashboard_button_posts_to_the_teardown_route_and_its_states_render(
    make_client, database
):
    ui = make_client(api_token=TOKEN)
    api = ui.__class__(ui.app, headers={"Authorization": f"Bearer {TOKEN}"})
    submitted = submit(api, "a", "b")
    ids = [r["id"] for r in submitted["requests"]]
    for request_id, server_id in zip(ids, ("srv-a", "srv-b"), strict=True):
        make_active(database.sessions, request_id, server_id)
    log_in(ui)
    page = ui.get(f"/ui/batches/{submitted['batch_id']}")
    route = f"/v1/batches/{submitted['batch_id']}/teardown"
    assert f'id="teardown" class="danger" data-action="{route}"' in page.text

    # What the button's click sends: a POST with the session cookie and the CSRF header.
    answer = ui.post(route, headers={CSRF_HEADER: csrf_value(TOKEN)})
    assert answer.status_code == 200 and len(answer.json()["tearing_down"]) == 2
    with session_scope(database.sessions) as session:
        transition(session, session.get(ServerRequest, uuid.UUID(ids[0])), RequestState.TORN_DOWN)

    live = ui.get(f"/ui/batches/{submitted['batch_id']}/live").text
    assert 'class="seg s-torn_down"' in live and 'class="seg s-tearing_down"' in live
    assert 'aria-valuenow="50"' in live  # TORN_DOWN is settled, TEARING_DOWN is not
    rows = ui.get(f"/ui/batches/{submitted['batch_id']}/requests?state=TEARING_DOWN").text
    assert rows.count("data-request=") == 1 and "TEARING_DOWN" in rows
    css = ui.get("/ui/static/ui.css").text
    assert ".s-tearing_down {" in css and ".s-torn_down {" in css
    assert "data.tearing_down" in ui.get("/ui/static/ui.js").text  # the flash says what started

    metrics = api.get("/metrics").text
    assert 'bms_requests{state="TEARING_DOWN"} 1.0' in metrics
    assert 'bms_requests{state="TORN_DOWN"} 1.0' in metrics


def test_the_bar_has_a_segment_for_every_state():
    assert sorted(BAR_ORDER) == sorted(RequestState)
