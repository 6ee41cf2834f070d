"""``/docs`` with no internet: the Swagger UI page and its assets are served by the API itself."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.helpers import TOKEN, api_settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    # A token is set: the docs stay readable without it, like /healthz.
    return TestClient(create_app(api_settings("sqlite://", None, api_token=TOKEN)))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_host(client, page):
    response = client.get(page)

    assert response.status_code == 200
    html = response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), html
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets, html
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset


def test_the_swagger_ui_served_reads_openapi_3_1(client):
    # Swagger UI 4 shows a blank "no valid version field" for FastAPI's 3.1 documents.
    html = client.get("/docs").text
    [script] = [s for s in re.findall(r"""src=["']([^"']+)["']""", html) if "swagger" in s]
    bundle = client.get(script).text
    versions = [tuple(map(int, v.split("."))) for v in re.findall(r'"(5\.\d+\.\d+)"', bundle)]
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert versions and max(versions) >= (5, 0, 0)
