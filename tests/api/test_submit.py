"""POST /v1/batches: 202 with the requests, 422 naming each bad field, idempotent replays."""

from __future__ import annotations

import uuid

import pytest

import tasks.batch_dispatch
import tasks.plan
from api.batches import submitted_json
from api.schemas import RequestRef, SubmittedBatch
from bmsctl.processes import free_port
from models.records import Batch
from models.states import RequestState
from tasks.intake import Submitted
from tests.factories import batch, server
from worker.app import make_celery
from worker.settings import Settings


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"


def test_submit_answers_202_with_one_pending_request_per_server(client, row_counts):
    body = batch(
        server(name="db", attach_volumes=[{"volume_id": volume(1)}, {"volume_id": volume(2)}]),
        server(name="web", count=3),
    )

    response = client.post("/v1/batches", json=body)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert set(answer) == {"batch_id", "requests", "total"}
    assert answer["total"] == 4
    uuid.UUID(answer["batch_id"])
    assert [r["name"] for r in answer["requests"]] == ["db", "web-0000", "web-0001", "web-0002"]
    assert {r["state"] for r in answer["requests"]} == {"PENDING"}
    assert row_counts() == {
        "batches": 1,
        "server_requests": 4,
        "volume_attachments": 2,
        "events": 4,
    }
    stored = client.get(f"/v1/batches/{answer['batch_id']}").json()
    assert stored["source"] == "api"
    assert [r["id"] for r in stored["requests"]] == [r["id"] for r in answer["requests"]]


def _servers_with(bad_index: int, bad_server: dict) -> dict:
    servers = [server(name=f"node-{i}") for i in range(4)]
    servers[bad_index] = bad_server
    return batch(*servers)


REFUSED = [
    pytest.param(
        _servers_with(3, server(name="node-3", nics=[{"subnet_id": ""}])),
        {"servers[3].nics[0].subnet_id"},
        id="empty-subnet",
    ),
    pytest.param(
        _servers_with(1, server(name="node 1", imageRef=None)),
        {"servers[1].name", "servers[1].imageRef"},
        id="two-bad-fields",
    ),
    pytest.param(
        _servers_with(0, server(adminPass="Secret-123")),
        {"servers[0].adminPass"},
        id="password",
    ),
    pytest.param(
        _servers_with(2, server(name="node-2", colour="blue")),
        {"servers[2].colour"},
        id="unknown-field",
    ),
    pytest.param(
        batch(
            server(name="a", attach_volumes=[{"volume_id": volume(7)}]),
            server(name="b", attach_volumes=[{"volume_id": volume(7)}]),
        ),
        {"servers[1].attach_volumes[0].volume_id"},
        id="volume-twice",
    ),
    pytest.param(batch(name=""), {"name"}, id="batch-name"),
    pytest.param({"name": "x", "servers": []}, {"servers"}, id="no-servers"),
    pytest.param([server()], {"body"}, id="not-an-object"),
]


@pytest.mark.parametrize(("body", "fields"), REFUSED)
def test_refused_batch_names_each_bad_field_and_stores_nothing(client, row_counts, body, fields):
    before = row_counts()

    response = client.post("/v1/batches", json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert {error["field"] for error in detail} == fields
    assert all(error["message"] for error in detail)
    assert row_counts() == before


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b'{"name": "x", ', {"content-type": "application/json"}, "not valid JSON"),
        (b"name: x", {"content-type": "application/yaml"}, "JSON object"),
    ],
    ids=["truncated-json", "not-json"],
)
def test_body_that_is_not_json_is_refused_naming_the_body(
    client, row_counts, content, headers, message
):
    before = row_counts()

    response = client.post("/v1/batches", content=content, headers=headers)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "body"
    assert message in error["message"]
    assert row_counts() == before


def test_resubmission_with_the_same_key_returns_the_same_batch(client, row_counts):
    body = batch(server(name="a"), server(name="b"))
    headers = {"Idempotency-Key": "rack-a-2026-11-27"}
    first = client.post("/v1/batches", json=body, headers=headers)
    after_first = row_counts()

    replay = client.post("/v1/batches", json=body, headers=headers)

    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert row_counts() == after_first
    # Another key is another batch.
    other = client.post("/v1/batches", json=body, headers={"Idempotency-Key": "rack-a-2"})
    assert other.status_code == 202
    assert other.json()["batch_id"] != first.json()["batch_id"]
    assert row_counts()["batches"] == 2


def test_without_a_key_each_submission_is_a_new_batch(client):
    first = client.post("/v1/batches", json=batch())
    second = client.post("/v1/batches", json=batch())

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["batch_id"] != second.json()["batch_id"]


def test_an_overlong_idempotency_key_is_refused(client, row_counts):
    before = row_counts()

    response = client.post("/v1/batches", json=batch(), headers={"Idempotency-Key": "k" * 129})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == ["Idempotency-Key"]
    assert row_counts() == before


def test_unreachable_broker_still_accepts_and_keeps_the_batch(
    client, row_counts, monkeypatch, database
):
    # A Celery app whose broker nothing listens on: neither the batch's dispatch task nor a
    # chain can be sent.
    dead = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    monkeypatch.setattr(tasks.plan, "app", dead)
    monkeypatch.setattr(tasks.batch_dispatch, "app", dead)
    headers = {"Idempotency-Key": "while-redis-was-down"}

    response = client.post("/v1/batches", json=batch(), headers=headers)

    # Stored and acknowledged with its id: the batch reconciler dispatches it once the broker
    # is back.
    assert response.status_code == 202
    assert [r["state"] for r in response.json()["requests"]] == ["PENDING"]
    assert row_counts()["server_requests"] == 1
    with database.sessions() as session:
        stored = session.get(Batch, uuid.UUID(response.json()["batch_id"]))
        assert (stored.request_count, stored.dispatched_position) == (1, 0)
    monkeypatch.undo()
    replay = client.post("/v1/batches", json=batch(), headers=headers)
    assert replay.status_code == 200
    assert replay.json()["batch_id"] == response.json()["batch_id"]


def test_the_answer_to_a_new_batch_is_what_the_model_serializes():
    # The route writes the answer as plain data (fast for 10,000 requests): it must be the
    # very bytes SubmittedBatch would give, names beyond ASCII included.
    submitted = Submitted(
        uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()], created=True, names=["web-0000", "n\u00e9-1"]
    )
    model = SubmittedBatch(
        batch_id=submitted.batch_id,
        requests=[
            RequestRef(id=i, name=n, state=RequestState.PENDING)
            for i, n in zip(submitted.request_ids, submitted.names, strict=True)
        ],
        total=2,
    )

    assert submitted_json(submitted) == model.model_dump_json()
