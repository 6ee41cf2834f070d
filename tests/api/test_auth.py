"""Bearer-token auth: with BMS_API_TOKEN set, every route but /healthz and the docs needs it."""

from __future__ import annotations

import uuid

import pytest

from tests.api.helpers import TOKEN
from tests.factories import batch

PROTECTED = [
    ("get", "/v1/batches"),
    ("post", "/v1/batches"),
    ("get", f"/v1/batches/{uuid.uuid4()}"),
    ("post", f"/v1/batches/{uuid.uuid4()}/cancel"),
    ("post", f"/v1/batches/{uuid.uuid4()}/retry"),
    ("get", f"/v1/requests/{uuid.uuid4()}"),
    ("post", f"/v1/requests/{uuid.uuid4()}/retry"),
    ("post", f"/v1/requests/{uuid.uuid4()}/cancel"),
]

WRONG = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-prefix"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="other-scheme"),
    pytest.param({"Authorization": TOKEN}, id="no-scheme"),
]


@pytest.fixture
def secured(make_client):
    return make_client(api_token=TOKEN)


@pytest.mark.parametrize("headers", WRONG)
@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_refuse_a_missing_or_wrong_token(
    secured, row_counts, method, path, headers
):
    before = row_counts()

    response = secured.request(method, path, headers=headers, json=batch())

    assert response.status_code == 401
    assert response.json() == {"detail": "missing or invalid bearer token"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in response.text
    assert row_counts() == before


def test_the_right_token_is_accepted(secured):
    auth = {"Authorization": f"Bearer {TOKEN}"}

    submitted = secured.post("/v1/batches", json=batch(), headers=auth)
    listed = secured.get("/v1/batches", headers=auth)

    assert submitted.status_code == 202
    assert listed.status_code == 200 and listed.json()["total"] == 1
    assert TOKEN not in submitted.text + listed.text


def test_health_and_docs_need_no_token(secured):
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/docs").status_code == 200
    schema = secured.get("/openapi.json")
    assert schema.status_code == 200
    assert TOKEN not in schema.text
    # The docs page offers the bearer scheme, so "Authorize" works there.
    assert "HTTPBearer" in schema.json()["components"]["securitySchemes"]


def test_without_a_configured_token_the_api_is_open(client):
    assert client.get("/v1/batches").status_code == 200
