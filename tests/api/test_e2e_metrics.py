"""``/metrics`` after a real run, parsed with prometheus-client's own text parser: its numbers
are the database's and the simulator's."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from api.app import create_app
from models.db import session_scope
from models.records import ServerRequest
from models.states import RequestState
from tests.api.helpers import TOKEN, api_settings
from tests.factories import batch, server
from worker.queues import ALL_QUEUES

pytestmark = pytest.mark.e2e


def scrape(api: TestClient) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}``."""
    answer = api.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_after_a_run_match_the_database_and_the_cloud(stack_factory):
    stack = stack_factory()
    # A tight create quota: the feeder spreads the creates over it.
    stack.start_worker("all", concurrency=4, BMS_RATE_LIMITS="create=2/second")
    # A fixed IP outside its subnet: a create the cloud refuses that the preflight does not see
    # (a missing flavor would make the preflight refuse the whole batch, before any create).
    outside = {"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1", "ip_address": "10.9.9.9"}
    # Names of their own: five create calls (a `count` entry would be one grouped call).
    metered = [server(name=f"metered{n}") for n in range(5)]
    body = batch(*metered, server(name="doomed", nics=[outside]))
    submitted = stack.submit(body)
    stack.wait_until_finished(submitted.batch_id, timeout=90)
    stack.stop_workers()  # their processes send what they counted (at most every half second)
    settings = api_settings(stack.database_url, stack.redis_url, api_token=TOKEN)
    api = TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})

    assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    samples = scrape(api)

    with session_scope(stack.sessions) as session:
        in_db = dict(
            session.execute(
                select(ServerRequest.state, func.count()).group_by(ServerRequest.state)
            ).all()
        )
    by_state = {dict(labels)["state"]: v for labels, v in samples["bms_requests"].items()}
    assert by_state == {s.value: in_db.get(s, 0) for s in RequestState}
    assert by_state["ACTIVE"] == 5 and by_state["FAILED"] == 1
    assert samples["bms_batches"][()] == 1
    assert samples["bms_redis_up"][()] == 1

    # Every call the cloud saw was counted once, by class and outcome.
    calls = Counter()
    outcomes = Counter()
    for labels, value in samples["bms_cloud_calls_total"].items():
        labels = dict(labels)
        calls[labels["api_class"]] += value
        outcomes[(labels["api_class"], labels["outcome"])] += value
    cloud = stack.simulator.control.counters()
    for api_class, seen in cloud.items():
        if api_class in calls:
            assert calls[api_class] == seen["calls"], api_class
            assert outcomes[(api_class, "throttled")] == seen["throttled"], api_class
    assert outcomes[("create", "ok")] == 5 and outcomes[("create", "error")] == 1

    # The feeder sends a create only when its slot is free: a create step held back by the
    # limiter (counted as a wait) is a create step re-scheduled, and there are few of them.
    steps = samples["bms_step_duration_seconds_count"]
    waits = {dict(k)["api_class"]: v for k, v in samples.get("bms_limiter_waits_total", {}).items()}
    retried = steps.get((("outcome", "retry"), ("task", "bms.create_server")), 0)
    assert waits.get("create", 0) == retried
    created = steps[(("outcome", "success"), ("task", "bms.create_server"))]
    assert created >= 6
    buckets = samples["bms_step_duration_seconds_bucket"]
    infinite = (("le", "+Inf"), ("outcome", "success"), ("task", "bms.create_server"))
    assert buckets[infinite] == created

    depths = {dict(k)["queue"]: v for k, v in samples["bms_queue_depth"].items()}
    assert set(depths) == set(ALL_QUEUES) and depths["bms.create"] == 0
    quota = {dict(k)["api_class"]: v for k, v in samples["bms_quota_limit"].items()}
    assert quota["create"] == 50  # the API's own settings: the default quota
    assert "bms_reconciler_restarts_total" in samples
