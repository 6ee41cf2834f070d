"""GET routes: the paged batch list, a batch with its counts, a request with its timeline."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from sqlalchemy import event

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


def pages(client, batch_id: str, limit: int, between=None) -> list[dict]:
    """Every page of the batch, following ``next_cursor``; ``between(n)`` runs after page n."""
    params = {"limit": limit}
    read = [client.get(f"/v1/batches/{batch_id}", params=params).json()]
    while read[-1]["next_cursor"] is not None:
        if between is not None:
            between(len(read))
        params = {"limit": limit, "cursor": read[-1]["next_cursor"]}
        read.append(client.get(f"/v1/batches/{batch_id}", params=params).json())
    return read


def test_batch_pages_list_every_request_once_while_states_change(client, database):
    submitted = submit(client, *(f"node-{n}" for n in range(23)))
    ids = [r["id"] for r in submitted["requests"]]

    def change_states(page_number: int) -> None:
        # Requests already read and requests still ahead both change state meanwhile.
        fail(database.sessions, ids[page_number * 5 - 1])
        fail(database.sessions, ids[page_number * 5 + 2])

    read = pages(client, submitted["batch_id"], limit=5, between=change_states)

    listed = [r["id"] for page in read for r in page["requests"]]
    assert listed == ids  # each exactly once, in submission order
    assert [len(page["requests"]) for page in read] == [5, 5, 5, 5, 3]
    assert read[-1]["next_cursor"] is None
    assert {page["limit"] for page in read} == {5}
    assert read[-1]["counts"]["FAILED"] == 8 and read[-1]["total"] == 23


def test_the_first_page_by_default_is_the_whole_of_a_small_batch(client):
    submitted = submit(client, "a", "b", "c")

    detail = client.get(f"/v1/batches/{submitted['batch_id']}").json()

    assert [r["id"] for r in detail["requests"]] == [r["id"] for r in submitted["requests"]]
    assert (detail["limit"], detail["next_cursor"]) == (100, None)


def test_an_exact_last_page_has_no_next_cursor(client):
    submitted = submit(client, "a", "b", "c", "d")

    read = pages(client, submitted["batch_id"], limit=2)

    assert [len(page["requests"]) for page in read] == [2, 2]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "9" * 40}, "cursor"),
    ],
)
def test_batch_page_bounds_name_the_bad_parameter(client, params, field):
    submitted = submit(client)

    response = client.get(f"/v1/batches/{submitted['batch_id']}", params=params)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == [field]


def test_reading_a_batch_never_loads_the_specs_it_does_not_show(client, database):
    submitted = submit(client, "a", "b")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        assert client.get(f"/v1/batches/{submitted['batch_id']}").status_code == 200
    finally:
        event.remove(database.engine, "before_cursor_execute", record)

    reads = [s for s in statements if "server_requests" in s]
    assert reads, statements
    assert not [s for s in reads if "server_requests.spec" in s]
