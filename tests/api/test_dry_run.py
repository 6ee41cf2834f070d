"""``POST /v1/batches?dry_run=true``: the preflight alone, against the simulator over HTTP;
nothing stored, nothing sent to the workers, nothing created in the cloud."""

from __future__ import annotations

import pytest
import redis

from tests.factories import batch, server

VOLUME = "e5e5e5e5-0000-4000-8000-000000000001"


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory()


@pytest.fixture
def cloud_client(make_client, sim):
    """The API, configured to read the simulator."""
    return make_client(endpoint=sim.base_url, project_id=sim.project_id, ak=sim.ak, sk=sim.sk)


@pytest.fixture
def queued(redis_url):
    """Messages waiting on the control queue (where a batch's start would go)."""
    broker = redis.Redis.from_url(redis_url)
    return lambda: broker.llen("bms.control")


def test_a_dry_run_reports_the_create_calls_and_stores_nothing(
    cloud_client, sim, row_counts, queued
):
    before, waiting = row_counts(), queued()
    body = batch(
        server(name="db", attach_volumes=[{"volume_id": VOLUME}]),
        server(name="web", count=30),
    )

    response = cloud_client.post("/v1/batches?dry_run=true", json=body)

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True and report["problems"] == []
    assert (report["servers"], report["create_calls"], report["create_calls_grouped"]) == (
        31,
        31,
        2,
    )
    assert report["create_group_max"] == 100
    assert {q["name"]: q["needed"] for q in report["quotas"]}["maxTotalInstances"] == 31
    assert row_counts() == before and queued() == waiting
    assert sim.control.servers() == [] and sim.control.counters()["create"]["calls"] == 0


def test_a_dry_run_names_each_problem_by_field_and_servers(cloud_client, sim, row_counts):
    sim.control.set_limits(maxTotalInstances=2)
    before = row_counts()
    body = batch(server(name="ok"), server(name="web", count=2, flavorRef="physical.nope"))

    report = cloud_client.post("/v1/batches?dry_run=true", json=body).json()

    assert report["ok"] is False
    assert report["problems"] == [
        {
            "field": "servers[1].flavorRef",
            "message": "flavor physical.nope does not exist",
            "servers": ["web-0000", "web-0001"],
        },
        {
            "field": "limits.maxTotalInstances",
            "message": "the batch needs 3 servers, the account has 2 left (limit 2, 0 in use)",
            "servers": [],
        },
    ]
    assert row_counts() == before
    assert sim.control.servers() == []


def test_an_invalid_batch_is_refused_before_any_read(cloud_client, sim):
    response = cloud_client.post("/v1/batches?dry_run=true", json=batch(server(count=0)))

    assert response.status_code == 422
    assert sum(c["calls"] for c in sim.control.counters().values()) == 0


def test_a_dry_run_without_a_cloud_is_503(client, row_counts):
    before = row_counts()

    response = client.post("/v1/batches?dry_run=true", json=batch())

    assert response.status_code == 503
    assert "needs the cloud" in response.json()["detail"]
    assert row_counts() == before


def test_a_dry_run_while_the_cloud_fails_is_503(cloud_client, sim):
    sim.control.set_faults(http_503_share=1.0)

    response = cloud_client.post("/v1/batches?dry_run=true", json=batch())

    assert response.status_code == 503
    assert "did not answer" in response.json()["detail"]
