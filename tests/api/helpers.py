"""Shortcuts of the API tests: their settings, a submission, a request put in FAILED by hand."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from models.db import session_scope
from models.records import ServerRequest, transition
from models.states import RequestState, Step
from tests.factories import batch, server
from worker.settings import Settings

TOKEN = "s3cret-token-for-tests"


def api_settings(database_url: str, redis_url: str | None, **overrides) -> Settings:
    # api_token is given explicitly so a BMS_API_TOKEN of the developer's shell never leaks in.
    overrides.setdefault("api_token", None)
    return Settings(database_url=database_url, redis_url=redis_url, **overrides)


def submit(client: TestClient, *names: str, batch_name: str = "test-batch") -> dict:
    """Submit one server per name; returns the 202 answer."""
    response = client.post(
        "/v1/batches", json=batch(*(server(name=n) for n in names or ["bms-web"]), name=batch_name)
    )
    assert response.status_code == 202, response.text
    return response.json()


def fail(sessions, request_id: str, step: Step = Step.CREATE) -> None:
    """Walk a PENDING request to FAILED at ``step``, the way a chain would record it."""
    with session_scope(sessions) as session:
        request = session.get(ServerRequest, uuid.UUID(request_id))
        transition(session, request, RequestState.CREATING)
        request.attempt = 3
        request.failed_step = step
        request.last_error_code = "BMS.0001"
        request.last_error_message = "simulated failure"
        transition(session, request, RequestState.FAILED, detail="create failed")
