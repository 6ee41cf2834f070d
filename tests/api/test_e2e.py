"""The API end to end: real worker processes, real Redis, the simulator over HTTP.

The API runs in the test process (``TestClient``) on the stack's database, with a token, and
sends its chains through the same Redis the workers consume.
"""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from models.states import RequestState
from tests.api.helpers import TOKEN, api_settings
from tests.factories import batch, server

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api_of(stack) -> TestClient:
    settings = api_settings(stack.database_url, stack.redis_url, api_token=TOKEN)
    return TestClient(create_app(settings, stack.sessions), headers=AUTH)


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"


def assert_no_secret(stack, *responses) -> None:
    text = "".join(r.text for r in responses)
    for secret in (stack.simulator.ak, stack.simulator.sk, TOKEN):
        assert secret not in text


def test_submitted_batch_ends_active_through_real_workers(stack_factory):
    stack = stack_factory()
    stack.start_worker("all", concurrency=4)
    api = api_of(stack)
    body = batch(
        server(name="db", attach_volumes=[{"volume_id": volume(1)}, {"volume_id": volume(2)}]),
        server(name="web", count=3, tags=["web"]),
    )

    submitted = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "e2e-1"})
    batch_id = submitted.json()["batch_id"]
    stack.wait_until_finished(uuid.UUID(batch_id), timeout=60)

    detail = api.get(f"/v1/batches/{batch_id}")
    assert submitted.status_code == 202
    assert detail.json()["counts"]["ACTIVE"] == 4 and detail.json()["total"] == 4
    db = api.get(f"/v1/requests/{submitted.json()['requests'][0]['id']}")
    db_request = db.json()
    assert db_request["state"] == "ACTIVE" and db_request["server_id"]
    assert db_request["addresses"]
    assert [a["state"] for a in db_request["attachments"]] == ["ATTACHED", "ATTACHED"]
    path = [e["to_state"] for e in db_request["events"]]
    assert path[0] == "PENDING" and path[-1] == "ACTIVE" and "BUILDING" in path
    # A replay after the fact: the same batch, now ACTIVE, and no server created twice.
    replay = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "e2e-1"})
    assert replay.status_code == 200 and replay.json()["batch_id"] == batch_id
    assert {r["state"] for r in replay.json()["requests"]} == {"ACTIVE"}
    assert len(stack.simulator.control.servers()) == 4
    assert_no_secret(stack, submitted, detail, db, replay, api.get("/v1/batches"))


def test_cancelled_batch_ends_cancelled_with_no_live_server(stack_factory):
    stack = stack_factory(job_seconds=(3, 4))
    stack.start_worker("all", concurrency=4)
    api = api_of(stack)
    submitted = api.post("/v1/batches", json=batch(server(name="slow", count=3))).json()
    batch_id = submitted["batch_id"]
    rows = uuid.UUID(batch_id)
    # Cancel while the creates are in the cloud: the servers exist and must go away again.
    stack.wait_for(
        lambda: all(r.state is RequestState.BUILDING for r in stack.requests(rows)),
        30,
        "the creates to be accepted",
    )

    cancelled = api.post(f"/v1/batches/{batch_id}/cancel")

    assert cancelled.status_code == 200
    assert cancelled.json()["cancelled"] == [r["id"] for r in submitted["requests"]]

    def chains_done() -> bool:
        requests = stack.requests(rows)
        # One count create made the three (its job watched by the group, not the requests).
        made = stack.simulator.control.servers()
        return all(not r.job_id and not r.cleanup_server_id for r in requests) and (
            len(made) == 3 and all(s["deleted"] for s in made)
        )

    stack.wait_for(chains_done, 60, "the cancelled servers to be deleted")
    counts = api.get(f"/v1/batches/{batch_id}").json()["counts"]
    assert counts["CANCELLED"] == 3
    assert len(stack.simulator.control.servers()) == 3  # each was created, then deleted


def test_failed_requests_are_retried_to_active(stack_factory):
    stack = stack_factory()
    stack.simulator.control.set_faults(create_fail_share=1.0)
    stack.start_worker("all", concurrency=4)
    api = api_of(stack)
    submitted = api.post("/v1/batches", json=batch(server(name="flaky", count=2))).json()
    batch_id, ids = submitted["batch_id"], [r["id"] for r in submitted["requests"]]
    stack.wait_until_finished(uuid.UUID(batch_id), timeout=60)
    failed = [api.get(f"/v1/requests/{i}").json() for i in ids]
    assert [r["state"] for r in failed] == ["FAILED", "FAILED"]
    assert all(r["failed_step"] and r["last_error_code"] for r in failed)
    stack.simulator.control.set_faults(create_fail_share=0.0)

    one = api.post(f"/v1/requests/{ids[0]}/retry")
    rest = api.post(f"/v1/batches/{batch_id}/retry")
    stack.wait_until_finished(uuid.UUID(batch_id), timeout=60)

    assert one.status_code == 200 and one.json()["state"] != "FAILED"
    assert rest.json() == {"batch_id": batch_id, "retried": [ids[1]]}
    final = api.get(f"/v1/batches/{batch_id}").json()
    assert [r["state"] for r in final["requests"]] == ["ACTIVE", "ACTIVE"]
    live = [s for s in stack.simulator.control.servers() if not s["deleted"]]
    assert sorted(s["name"] for s in live) == ["flaky-0000", "flaky-0001"]
