"""GET /healthz: 200 when the database and Redis answer, 503 naming the one that does not
(and why, to a caller with the token)."""

from __future__ import annotations

from bmsctl.processes import free_port
from models.db import make_engine, make_session_factory
from tests.api.helpers import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_healthy_when_database_and_broker_answer(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": {"ok": True, "error": None},
        "broker": {"ok": True, "error": None},
    }


def test_unavailable_broker_is_503_and_named(make_client):
    # Nothing listens there: the port was free a moment ago.
    client = make_client(redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0", api_token=TOKEN)

    response = client.get("/healthz", headers=AUTH)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == {"ok": True, "error": None}
    assert body["broker"]["ok"] is False and "ConnectionError" in body["broker"]["error"]
    assert "hunter2" not in response.text


def test_unavailable_database_is_503_and_named(make_client, tmp_path):
    client = make_client(api_token=TOKEN)
    # SQLite cannot create a database file in a directory that does not exist.
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'bms.db'}")
    client.app.state.sessions = make_session_factory(engine)

    response = client.get("/healthz", headers=AUTH)

    assert response.status_code == 503
    body = response.json()
    assert body["database"]["ok"] is False and body["database"]["error"]
    assert body["broker"] == {"ok": True, "error": None}
    engine.dispose()
