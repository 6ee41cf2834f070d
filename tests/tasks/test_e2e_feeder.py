"""End to end: a batch far larger than the create quota waits as rows, not as messages.

Real worker processes, real Redis, a migrated database, the simulator over HTTP with a low
create quota. What is counted: the create task's runs (the workers' step counters in Redis, as
``/metrics`` reads them) against the create calls the simulator admitted, and its 429s.
"""

from __future__ import annotations

import pytest
import redis

from models.states import RequestState
from tests.factories import server
from worker.metrics import STEPS

pytestmark = pytest.mark.e2e

#: Low enough that most of the batch waits for quota for most of the run.
QUOTA = "create=4/second"
SERVERS = 40


def create_task_runs(redis_url: str) -> int:
    """Runs of ``bms.create_server``, whatever their outcome (a re-run counts once per run)."""
    steps = redis.Redis.from_url(redis_url).hgetall(STEPS)
    return sum(
        int(value)
        for key, value in steps.items()
        if key.decode().startswith("bms.create_server|") and key.decode().endswith("|count")
    )


def test_a_batch_ten_times_the_quota_costs_about_one_create_run_per_create(stack_factory):
    stack = stack_factory(quotas=QUOTA, job_seconds=(0.0, 0.0))
    for index in range(2):
        stack.start_worker(f"w{index}", concurrency=2, BMS_RATE_LIMITS=QUOTA)
    servers = [server(name=f"fed-{n:02d}") for n in range(SERVERS)]
    submitted = stack.submit({"name": "fed", "servers": servers})

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [RequestState.ACTIVE] * SERVERS
    assert [r.attempt for r in requests] == [1] * SERVERS
    counters = stack.simulator.control.counters()["create"]
    assert counters["throttled"] == 0
    assert counters["calls"] == SERVERS
    # Each create ran once, with the slot the feeder reserved for it: no run was spent on
    # finding the quota used up (before the feeder: several per create, growing with the queue).
    stack.stop_workers()  # their processes send what they counted
    runs = create_task_runs(stack.redis_url)
    assert SERVERS <= runs <= 1.2 * SERVERS, runs
