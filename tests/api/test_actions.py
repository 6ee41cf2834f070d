"""Cancel and retry through the API, on the database alone (the chains they send wait in Redis)."""

from __future__ import annotations

from tests.api.helpers import fail, submit


def states(client, batch_id: str) -> list[str]:
    return [r["state"] for r in client.get(f"/v1/batches/{batch_id}").json()["requests"]]


def test_cancel_batch_cancels_its_unfinished_requests_only(client, database):
    submitted = submit(client, "a", "b", "c")
    ids = [r["id"] for r in submitted["requests"]]
    fail(database.sessions, ids[0])

    response = client.post(f"/v1/batches/{submitted['batch_id']}/cancel")

    assert response.status_code == 200
    assert response.json() == {"batch_id": submitted["batch_id"], "cancelled": ids[1:]}
    assert states(client, submitted["batch_id"]) == ["FAILED", "CANCELLED", "CANCELLED"]
    # Again: nothing left to cancel.
    again = client.post(f"/v1/batches/{submitted['batch_id']}/cancel")
    assert again.json()["cancelled"] == []


def test_retry_batch_resumes_its_failed_requests_at_the_failed_step(client, database):
    submitted = submit(client, "a", "b", "c")
    ids = [r["id"] for r in submitted["requests"]]
    fail(database.sessions, ids[0])
    fail(database.sessions, ids[2])

    response = client.post(f"/v1/batches/{submitted['batch_id']}/retry")

    assert response.status_code == 200
    assert response.json() == {"batch_id": submitted["batch_id"], "retried": [ids[0], ids[2]]}
    assert states(client, submitted["batch_id"]) == ["CREATING", "PENDING", "CREATING"]
    detail = client.get(f"/v1/requests/{ids[0]}").json()
    assert detail["failed_step"] is None and detail["last_error_code"] is None
    assert detail["events"][-1]["detail"] == "retry from create"


def test_retry_request_answers_its_new_state(client, database):
    request = submit(client)["requests"][0]
    fail(database.sessions, request["id"])

    response = client.post(f"/v1/requests/{request['id']}/retry")

    assert response.status_code == 200
    assert response.json() == {"id": request["id"], "name": request["name"], "state": "CREATING"}


def test_retry_of_a_request_that_did_not_fail_is_409(client):
    request = submit(client)["requests"][0]

    response = client.post(f"/v1/requests/{request['id']}/retry")

    assert response.status_code == 409
    assert "is PENDING" in response.json()["detail"]
    assert client.get(f"/v1/requests/{request['id']}").json()["state"] == "PENDING"


def test_cancel_request_then_again_is_409(client):
    request = submit(client)["requests"][0]

    first = client.post(f"/v1/requests/{request['id']}/cancel")
    second = client.post(f"/v1/requests/{request['id']}/cancel")

    assert first.status_code == 200 and first.json()["state"] == "CANCELLED"
    assert second.status_code == 409 and "is CANCELLED" in second.json()["detail"]
    timeline = client.get(f"/v1/requests/{request['id']}").json()["events"]
    assert [(e["from_state"], e["to_state"]) for e in timeline] == [
        (None, "PENDING"),
        ("PENDING", "CANCELLED"),
    ]
