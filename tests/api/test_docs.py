"""The OpenAPI document behind /docs: every route described, the batch body's real schema."""

from __future__ import annotations

import pytest

from api.app import create_app
from models.spec import parse_batch
from tests.api.helpers import api_settings


@pytest.fixture(scope="module")
def schema() -> dict:
    # The document needs no database: it is built from the routes alone.
    return create_app(api_settings("sqlite://", None)).openapi()


def test_every_route_has_a_summary_and_a_description(schema):
    operations = [op for path in schema["paths"].values() for op in path.values()]

    # + /metrics, /v1/batches/{id}/webhooks, /v1/dead-letters, /v1/batches/{id}/teardown
    assert len(operations) == 13
    assert all(op.get("summary") and op.get("description") for op in operations)


def test_batch_body_is_described_by_the_spec_and_its_example_validates(schema):
    body = schema["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]

    assert body["schema"]["$ref"] == "#/components/schemas/BatchSpec"
    assert "ServerSpec" in schema["components"]["schemas"]
    [example] = body["schema"]["examples"]
    assert len(parse_batch(example).expand()) == 5


def test_422_answers_are_documented_in_our_shape(schema):
    post = schema["paths"]["/v1/batches"]["post"]["responses"]

    assert post["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/InvalidRequest")
    assert "HTTPValidationError" not in schema["components"]["schemas"]
