"""API test fixtures: the app on the migrated ``database`` (each backend) and the session Redis.

Submissions dispatch real Celery messages to that Redis; with no worker listening they wait
there harmlessly (each end-to-end stack flushes Redis when it starts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from models.records import Batch, Event, ServerRequest, VolumeAttachment
from tests.api.helpers import api_settings


@pytest.fixture
def make_client(database, redis_url) -> Iterator[Callable[..., TestClient]]:
    """A TestClient of an app on ``database``; keyword arguments are settings."""
    clients: list[TestClient] = []

    def build(**overrides) -> TestClient:
        settings = api_settings(database.url, overrides.pop("redis_url", redis_url), **overrides)
        client = TestClient(create_app(settings, database.sessions))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client) -> TestClient:
    """The API without a token configured (open, as on loopback)."""
    return make_client()


@pytest.fixture
def row_counts(database) -> Callable[[], dict[str, int]]:
    """Rows in every table a submission writes, to show that a refusal stored nothing."""

    def count() -> dict[str, int]:
        with database.sessions() as session:
            return {
                model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Batch, ServerRequest, VolumeAttachment, Event)
            }

    return count
