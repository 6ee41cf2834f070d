"""GET routes: the paged batch list, a batch with its counts, a request with its timeline."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from models.states import RequestState
from tests.api.helpers import fail, submit
from tests.factories import batch, server

ALL_STATES = {state.value for state in RequestState}


def test_batches_are_listed_newest_first_in_pages(client):
    for n in range(5):
        submit(client, "a", "b", batch_name=f"batch-{n}")

    pages = [
        client.get("/v1/batches", params={"limit": 2, "offset": offset}).json()
        for offset in (0, 2, 4)
    ]

    assert [[b["name"] for b in page["items"]] for page in pages] == [
        ["batch-4", "batch-3"],
        ["batch-2", "batch-1"],
        ["batch-0"],
    ]
    assert {page["total"] for page in pages} == {5}
    first = pages[0]["items"][0]
    assert set(first["counts"]) == ALL_STATES
    assert first["counts"]["PENDING"] == 2 and first["total"] == 2
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None


def test_batch_list_defaults_and_bounds(client):
    submit(client)

    default = client.get("/v1/batches").json()
    past_the_end = client.get("/v1/batches", params={"offset": 10}).json()

    assert (default["limit"], default["offset"], len(default["items"])) == (50, 0, 1)
    assert past_the_end["items"] == [] and past_the_end["total"] == 1
    for params, field in [
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
    ]:
        response = client.get("/v1/batches", params=params)
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["detail"]] == [field]


def test_batch_detail_counts_requests_per_state(client, database):
    submitted = submit(client, "a", "b", "c")
    fail(database.sessions, submitted["requests"][1]["id"])

    detail = client.get(f"/v1/batches/{submitted['batch_id']}").json()

    assert detail["name"] == "test-batch" and detail["source"] == "api"
    assert detail["counts"] == {**dict.fromkeys(ALL_STATES, 0), "PENDING": 2, "FAILED": 1}
    assert [(r["name"], r["state"]) for r in detail["requests"]] == [
        ("a", "PENDING"),
        ("b", "FAILED"),
        ("c", "PENDING"),
    ]
    assert detail["requests"][1]["failed_step"] == "create"


def test_request_detail_shows_spec_errors_attachments_and_timeline(client, database):
    body = batch(server(name="db", attach_volumes=[{"volume_id": "vol-1", "device": "/dev/sdb"}]))
    request_id = client.post("/v1/batches", json=body).json()["requests"][0]["id"]
    fail(database.sessions, request_id)

    detail = client.get(f"/v1/requests/{request_id}").json()

    assert detail["state"] == "FAILED" and detail["failed_step"] == "create"
    assert detail["attempt"] == 3
    assert (detail["last_error_code"], detail["last_error_message"]) == (
        "BMS.0001",
        "simulated failure",
    )
    assert detail["spec"]["create_body"]["name"] == "db"
    assert detail["attachments"] == [
        {
            "volume_id": "vol-1",
            "device": "/dev/sdb",
            "state": "PENDING",
            "job_id": None,
            "attempt": 0,
        }
    ]
    timeline = [(e["from_state"], e["to_state"], e["detail"]) for e in detail["events"]]
    assert timeline == [
        (None, "PENDING", "submitted via api"),
        ("PENDING", "CREATING", None),
        ("CREATING", "FAILED", "create failed"),
    ]
    assert all(datetime.fromisoformat(e["at"]).tzinfo for e in detail["events"])
    assert "create_marker" not in detail and "fence" not in detail


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("get", "/v1/batches/{id}", "batch"),
        ("post", "/v1/batches/{id}/cancel", "batch"),
        ("post", "/v1/batches/{id}/retry", "batch"),
        ("get", "/v1/requests/{id}", "request"),
        ("post", "/v1/requests/{id}/retry", "request"),
        ("post", "/v1/requests/{id}/cancel", "request"),
    ],
)
def test_unknown_ids_are_404_and_malformed_ones_422(client, method, path, what):
    unknown = uuid.uuid4()

    missing = client.request(method, path.format(id=unknown))
    malformed = client.request(method, path.format(id="not-a-uuid"))

    assert missing.status_code == 404
    assert missing.json() == {"detail": f"{what} {unknown} not found"}
    assert malformed.status_code == 422
    [error] = malformed.json()["detail"]
    assert error["field"] == f"{what}_id" and "UUID" in error["message"]
