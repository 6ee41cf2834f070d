"""Hostile input at the API (issue 14): each finding as it was found, over HTTP to the app.

Each request here got a 422 before the token, a 500, or was accepted before these bounds.
"""

from __future__ import annotations

import pytest

from bmsctl.processes import free_port
from models import spec
from tests.api.helpers import TOKEN
from tests.factories import batch, server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def fields(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["detail"]}


@pytest.fixture
def guarded(make_client):
    """The API with a token, as it runs off loopback."""
    return make_client(api_token=TOKEN)


@pytest.fixture
def no_merge(monkeypatch):
    """Fail the test if ``defaults`` is merged into any server."""

    def refuse(*_args):
        raise AssertionError("defaults were merged before the batch was bounded")

    monkeypatch.setattr(spec, "deep_merge", refuse)


# Finding 1: the body was read (and parsed) before the token was checked, with no size limit.


def test_the_token_is_checked_before_the_body_is_read(guarded, row_counts):
    response = guarded.post("/v1/batches", content=b"{not json", headers=JSON)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert row_counts()["batches"] == 0


def test_a_body_over_the_limit_is_refused_by_its_length(make_client, row_counts):
    client = make_client(api_token=TOKEN, api_max_body_bytes=4096)

    response = client.post("/v1/batches", content=b" " * 5000, headers={**AUTH, **JSON})

    assert response.status_code == 413
    assert "BMS_API_MAX_BODY_BYTES" in response.json()["detail"]
    assert row_counts()["batches"] == 0


def test_a_streamed_body_is_counted_and_refused_past_the_limit(make_client, row_counts):
    client = make_client(api_token=TOKEN, api_max_body_bytes=4096)

    def chunks():
        yield b'{"name": "x", "servers": ['
        for _ in range(100):
            yield b" " * 1000

    response = client.post("/v1/batches", content=chunks(), headers={**AUTH, **JSON})

    assert response.status_code == 413
    assert row_counts()["batches"] == 0


def test_the_default_limit_is_a_few_megabytes(guarded):
    body = b" " * (5 * 1024 * 1024)
    response = guarded.post("/v1/batches", content=body, headers={**AUTH, **JSON})
    assert response.status_code == 413


# Finding 2: defaults were deep-copied into every server before any size check.


def test_bad_defaults_are_named_once_and_never_merged(guarded, no_merge, row_counts):
    defaults = {f"unknown{i}": i for i in range(300)}
    servers = [{"name": f"s{i}"} for i in range(1000)]

    response = guarded.post(
        "/v1/batches", json={"name": "amp", "defaults": defaults, "servers": servers}, headers=AUTH
    )

    errors = fields(response)
    assert all(field.startswith("defaults.") for field in errors)
    assert len(errors) <= 100
    assert row_counts()["batches"] == 0


def test_defaults_too_large_to_merge_are_refused_before_merging(guarded, no_merge):
    volumes = [{"volumetype": "SAS", "size": 10, "metadata": {"k": "v"}}] * 59
    servers = [{"name": f"s{i}", "count": 10} for i in range(900)]

    response = guarded.post(
        "/v1/batches",
        json=batch(*servers, defaults={**server(name=None), "data_volumes": volumes}),
        headers=AUTH,
    )

    assert "once defaults are merged" in fields(response)["servers"]


def test_metadata_entries_are_bounded(guarded):
    metadata = {"op_svc_userid": "u", **{f"k{i}": "v" for i in range(5000)}}
    response = guarded.post("/v1/batches", json=batch(server(metadata=metadata)), headers=AUTH)
    assert "servers[0].metadata" in fields(response)


# Finding 3: no cap on the servers of a batch.


def test_a_batch_over_the_server_cap_is_refused_naming_the_cap(guarded, no_merge, row_counts):
    servers = [server(name=f"s{i}", count=100) for i in range(101)]

    response = guarded.post("/v1/batches", json=batch(*servers), headers=AUTH)

    message = fields(response)["servers"]
    assert "10,100 servers" in message and "10,000 (BMS_MAX_BATCH_SERVERS)" in message
    assert row_counts()["batches"] == 0


def test_the_cap_is_a_setting_and_counts_come_from_defaults_too(make_client):
    client = make_client(max_batch_servers=5)

    over = client.post(
        "/v1/batches",
        json=batch(server(), defaults={"count": 3}, name="b")
        | {"servers": [{**server(), "count": 3}, server(name="two", count=None)]},
    )
    at_cap = client.post("/v1/batches", json=batch(server(count=5)))

    assert "at most 5 (BMS_MAX_BATCH_SERVERS)" in fields(over)["servers"]
    assert at_cap.status_code == 202


# Finding 4: 600-900 levels of nesting in defaults gave a 500 (RecursionError).


@pytest.mark.parametrize("depth", [33, 600, 900])
def test_nesting_beyond_32_levels_is_refused(guarded, depth, row_counts):
    response = guarded.post(
        "/v1/batches", json=batch(server(), defaults={"metadata": nested(depth)}), headers=AUTH
    )

    (field, message), *_ = fields(response).items()
    assert field.startswith("defaults.metadata.x") and message == "nested deeper than 32 levels"
    assert row_counts()["batches"] == 0


def test_nesting_beyond_the_json_parser_is_a_422_too(guarded):
    body = b'{"name": "x", "servers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = guarded.post("/v1/batches", content=body, headers={**AUTH, **JSON})
    assert fields(response) == {"body": "nested deeper than 32 levels"}


# Finding 5: huge paging values gave 500s.


@pytest.mark.parametrize("offset", ["9223372036854775808", "1000000001"])
def test_paging_parameters_are_bounded(guarded, offset):
    refused = guarded.get(f"/v1/batches?offset={offset}", headers=AUTH)
    largest = guarded.get("/v1/batches?offset=1000000000", headers=AUTH)

    assert set(fields(refused)) == {"offset"}
    assert largest.status_code == 200 and largest.json()["items"] == []


# Finding 6: "5", true and 2.0 passed as counts; NUL passed in names, metadata and tags.


@pytest.mark.parametrize("count", ["5", True, 2.0])
def test_count_is_a_strict_integer(client, count):
    assert "servers[0].count" in fields(client.post("/v1/batches", json=batch(server(count=count))))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (batch(server(), name="rack\x00a"), "name"),
        (
            batch(server(metadata={"op_svc_userid": "u", "team": "a\x00"})),
            "servers[0].metadata.team",
        ),
        (batch(server(tags=["web\x00"])), "servers[0].tags[0]"),
        (batch(server(tags=["web\x1b[31m"])), "servers[0].tags[0]"),
        (batch(server(), defaults={"metadata": {"k\x07": "v"}}), "defaults.metadata.k\x07"),
    ],
)
def test_control_characters_are_refused(client, data, field, row_counts):
    errors = fields(client.post("/v1/batches", json=data))
    assert "control characters" in errors[field]
    assert row_counts()["batches"] == 0


@pytest.mark.parametrize("name", ["[/bold]", "rack a", "a/b", "\x1b[2J"])
def test_batch_names_follow_the_clouds_character_rules(client, name):
    assert "name" in fields(client.post("/v1/batches", json=batch(server(), name=name)))


# Finding 9 (the API's part): /healthz named the broker's host and port to anyone.


def test_healthz_says_only_down_without_the_token(make_client):
    port = free_port()  # nothing listens there
    client = make_client(redis_url=f"redis://127.0.0.1:{port}/0", api_token=TOKEN)

    anonymous = client.get("/healthz")
    operator = client.get("/healthz", headers=AUTH)

    assert anonymous.status_code == operator.status_code == 503
    assert anonymous.json()["broker"] == {"ok": False, "error": "down"}
    assert str(port) not in anonymous.text and "127.0.0.1" not in anonymous.text
    assert "ConnectionError" in operator.json()["broker"]["error"]
