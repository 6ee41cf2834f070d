"""End to end under faults: failed jobs, killed workers, lost messages, shared quota.

Real worker processes, real Redis, a migrated database, the simulator over HTTP.
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis
from sqlalchemy import select

from models.db import session_scope
from models.records import CloudJob, JobKind
from models.states import RequestState, Step
from tests.factories import server
from worker.fault_hooks import KILL_AFTER_CREATE_POST

pytestmark = pytest.mark.e2e
S = RequestState


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"


def batch_of(count: int, name: str = "batch", volumes: bool = True) -> dict:
    servers = [
        server(
            name=f"{name}-{i:02d}",
            attach_volumes=[{"volume_id": volume(i + 1)}] if volumes else [],
            tags=[name],
        )
        for i in range(count)
    ]
    return {"name": name, "servers": servers}


def live_servers_by_marker_request(stack) -> Counter:
    """How many live (not deleted) servers the simulator holds per request name."""
    names = Counter()
    for cloud_server in stack.simulator.control.servers():
        if not cloud_server["deleted"] and cloud_server["status"] != "DELETED":
            names[cloud_server["name"]] += 1
    return names


def test_failed_jobs_are_retried_and_failed_servers_deleted(stack_factory):
    stack = stack_factory(create_fail_share=0.3, attach_fail_share=0.2, seed=7)
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit(batch_of(20, "flaky"))

    requests = stack.wait_until_finished(submitted.batch_id, timeout=240)

    states = Counter(r.state for r in requests)
    assert set(states) <= {S.ACTIVE, S.FAILED}, states
    assert states[S.ACTIVE] >= 10  # 3 attempts at 30% failure: most get through

    def deletes_done() -> bool:
        return not [s for s in stack.simulator.control.servers() if s["task_state"] == "deleting"]

    stack.wait_for(deletes_done, 30, "the last delete jobs to finish")
    cloud = stack.simulator.control.servers()
    live = [s for s in cloud if not s["deleted"] and s["status"] != "DELETED"]
    # Failed create attempts happened, and every server they left was deleted.
    assert len(cloud) > len(requests)
    assert all(s["status"] == "ERROR" or s["deleted"] or s in live for s in cloud)
    assert not [s for s in live if s["status"] == "ERROR"]
    for request in requests:
        mine = [s for s in live if s["id"] == request.server_id]
        if request.state is S.ACTIVE:
            assert len(mine) == 1 and mine[0]["name"] == request.name
        else:
            assert request.last_error_code and request.last_error_message
            assert request.failed_step in (Step.CREATE, Step.ATTACH)
            if request.failed_step is Step.CREATE:
                assert request.server_id is None  # nothing of it left in the cloud
    # Exactly one live server per ACTIVE request; servers of requests FAILED at attach are
    # kept on purpose, so that a retry resumes at the attach.
    kept = sum(1 for r in requests if r.state is S.FAILED and r.failed_step is Step.ATTACH)
    assert len(live) == states[S.ACTIVE] + kept


def test_worker_killed_right_after_create_post_makes_no_duplicate(stack_factory, tmp_path):
    token = tmp_path / "kill-token"
    token.write_text("armed")
    stack = stack_factory()
    stack.start_worker("all", concurrency=2, **{KILL_AFTER_CREATE_POST: str(token)})
    submitted = stack.submit(batch_of(6, "crash", volumes=False))

    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert not token.exists(), "the crash hook never fired"
    assert [r.state for r in requests] == [S.ACTIVE] * 6
    cloud = stack.simulator.control.servers()
    assert len(cloud) == 6, [s["name"] for s in cloud]  # the create was adopted, not repeated
    assert sorted(s["name"] for s in cloud) == sorted(r.name for r in requests)


def test_worker_sigkilled_mid_batch_is_covered_by_the_reconciler(stack_factory):
    stack = stack_factory(job_seconds=(0.5, 1.5))
    fast_reconcile = {
        "BMS_RECONCILE_INTERVAL_SECONDS": "1",
        "BMS_RECONCILE_AFTER_SECONDS": "4",
    }
    doomed = stack.start_worker("doomed", concurrency=2, **fast_reconcile)
    stack.start_worker("survivor", concurrency=2, **fast_reconcile)
    stack.start_beat(**fast_reconcile)
    submitted = stack.submit(batch_of(12, "kill"))

    def some_progress() -> bool:
        return any(r.state is not S.PENDING for r in stack.requests(submitted.batch_id))

    stack.wait_for(some_progress, 60, "the batch to start")
    doomed.expected_dead = True
    doomed.kill_group()

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [S.ACTIVE] * 12
    assert len(stack.simulator.control.servers()) == 12  # no duplicate server


def test_reconciler_rebuilds_chains_whose_messages_were_purged(stack_factory):
    stack = stack_factory()
    submitted = stack.submit(batch_of(5, "purged", volumes=False))  # no worker yet
    purged = redis.Redis.from_url(stack.redis_url).delete("bms.control")
    assert purged == 1  # the batch's start message (preflight, dispatch) was there, and is gone

    # The batch reconciler resumes a dispatch that never started once it has stalled for
    # BMS_DISPATCH_STALL_SECONDS (60 s by default: the test waited that long for it).
    fast_reconcile = {
        "BMS_RECONCILE_INTERVAL_SECONDS": "1",
        "BMS_RECONCILE_AFTER_SECONDS": "2",
        "BMS_DISPATCH_STALL_SECONDS": "2",
    }
    stack.start_worker("all", concurrency=2, **fast_reconcile)
    stack.start_beat(**fast_reconcile)
    requests = stack.wait_until_finished(submitted.batch_id, timeout=90)

    assert [r.state for r in requests] == [S.ACTIVE] * 5
    assert len(stack.simulator.control.servers()) == 5


def test_four_workers_share_the_create_quota_without_a_429(stack_factory):
    quota = "create=20/second"
    stack = stack_factory(quotas=quota, job_seconds=(0.0, 0.0))
    for index in range(4):
        stack.start_worker(f"w{index}", concurrency=2, BMS_RATE_LIMITS=quota)
    submitted = stack.submit(batch_of(100, "quota", volumes=False))

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    # Waiting for quota is not a failed attempt: every server took exactly one create.
    assert [r.attempt for r in requests] == [1] * 100
    counters = stack.simulator.control.counters()["create"]
    assert counters["throttled"] == 0
    assert counters["calls"] == 100
    with session_scope(stack.sessions) as session:
        started = sorted(
            job.created_at.timestamp()
            for job in session.scalars(select(CloudJob).where(CloudJob.kind == JobKind.CREATE))
        )
    # Spread as the quota allows: 100 creates at 20/s take at least 4 s. That no second held
    # more than 20 calls is the simulator's own check at their arrival (its sliding window
    # answers 429 past the quota: 0 above). Counting by the recorded answers instead was
    # noisy: answer latency put 23 records in one second while the calls kept the quota.
    assert started[-1] - started[0] >= 4.0


def test_attach_quota_waits_spend_no_attach_attempt(stack_factory):
    quota = "attach=2/second"
    stack = stack_factory(quotas=quota, job_seconds=(0.0, 0.1))
    stack.start_worker("all", concurrency=4, BMS_RATE_LIMITS=quota)
    submitted = stack.submit(batch_of(8, "attachq"))

    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert [r.state for r in requests] == [S.ACTIVE] * 8
    assert [a.attempt for r in requests for a in r.attachments] == [1] * 8
    assert stack.simulator.control.counters()["attach"]["throttled"] == 0
