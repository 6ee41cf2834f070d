"""Chaos, small enough for CI: faults on, a worker SIGKILLed, Redis restarted, cancels mid-flight.

Real worker processes and beat, a real Redis (restarted once, losing every message), the
database (SQLite, and PostgreSQL when ``TEST_DATABASE_URL`` is set) and the simulator over HTTP
with failed jobs, dropped connections and 5xx answers. Whatever happens, every request ends,
nothing is left billed that should not be, and nothing is made twice.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.records import Event, StrayServer, StrayState
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState
from tasks.control import cancel
from tests.factories import server

pytestmark = pytest.mark.e2e
S = RequestState
FAST_RECONCILE = {"BMS_RECONCILE_INTERVAL_SECONDS": "1", "BMS_RECONCILE_AFTER_SECONDS": "5"}
SERVERS = 16


def volume_id(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"  # the default catalog's disks


def chaos_batch() -> dict:
    servers = [
        server(
            name=f"chaos-{i:02d}",
            attach_volumes=[{"volume_id": volume_id(2 * i + k + 1)} for k in range(1 + i % 2)],
            tags=["chaos", f"n{i}"],
        )
        for i in range(SERVERS)
    ]
    return {"name": "chaos", "servers": servers}


def live(cloud_servers: list[dict]) -> list[dict]:
    return [s for s in cloud_servers if not s["deleted"] and s["status"] != "DELETED"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_chaos_ends_every_request_with_exactly_its_servers(stack_factory, session_redis, backend):
    stack = stack_factory(
        backend,
        job_seconds=(0.3, 1.2),
        create_fail_share=0.2,
        attach_fail_share=0.25,
        drop_share=0.05,
        http_500_share=0.03,
        seed=23,
    )
    doomed = stack.start_worker("doomed", concurrency=2, **FAST_RECONCILE)
    stack.start_worker("steady", concurrency=2, **FAST_RECONCILE)
    stack.start_beat(**FAST_RECONCILE)
    submitted = stack.submit(chaos_batch())
    batch_id = submitted.batch_id

    def states() -> Counter:
        return Counter(r.state for r in stack.requests(batch_id))

    stack.wait_for(lambda: states()[S.BUILDING] + states()[S.ATTACHING] >= 4, 90, "creates")
    doomed.expected_dead = True
    doomed.kill_group()  # a machine lost mid-flight, its messages with it
    cancelled = [r.id for r in stack.requests(batch_id) if r.state is not S.ACTIVE][:4]
    cancel(stack.sessions, cancelled)

    for worker in stack.workers:
        worker.expected_dead = True  # a worker may die with Redis (kombu); ours restart it
    session_redis.restart()  # every queued and unacknowledged message is gone
    stack.start_worker("after-restart", concurrency=2, **FAST_RECONCILE)
    stack.start_beat(**FAST_RECONCILE)

    requests = stack.wait_until_finished(batch_id, timeout=300)

    def strays_settled() -> bool:
        with session_scope(stack.sessions) as session:
            open_states = (StrayState.PENDING, StrayState.DELETING)
            return not list(
                session.scalars(select(StrayServer.id).where(StrayServer.state.in_(open_states)))
            )

    stack.wait_for(strays_settled, 60, "stray servers to be deleted")
    stack.wait_for(
        lambda: not [s for s in stack.simulator.control.servers() if s["task_state"] == "deleting"],
        60,
        "the last deletes",
    )

    assert {r.state for r in requests} <= {S.ACTIVE, S.FAILED, S.CANCELLED}
    assert all(requests_state_known(r) for r in requests)
    cloud = live(stack.simulator.control.servers())
    markers = Counter(s["metadata"].get(MARKER_METADATA_KEY) for s in cloud)
    assert all(n == 1 for n in markers.values()), markers  # nothing made twice
    by_id = {s["id"]: s for s in cloud}
    keeps = {r.server_id for r in requests if r.state is S.ACTIVE}
    # A request FAILED after its server was built keeps it, so that a retry resumes there; one
    # FAILED while its create may be in the cloud keeps its marker, so that a retry adopts it.
    keeps |= {r.server_id for r in requests if r.state is S.FAILED and r.server_id}
    # So does one FAILED while its create job ran: the retry polls that job again.
    kept_markers = {
        r.create_marker
        for r in requests
        if r.state is S.FAILED and (r.create_intent_at or r.job_id)
    }
    keeps |= {s["id"] for s in cloud if s["metadata"].get(MARKER_METADATA_KEY) in kept_markers}
    assert set(by_id) == keeps, unowned_story(stack, requests, by_id, keeps)
    for request in requests:
        if request.state is not S.ACTIVE:
            continue
        mine = by_id[request.server_id]
        assert mine["name"] == request.name
        assert sorted(v["id"] for v in mine["volumes"]) == sorted(
            a.volume_id for a in request.attachments
        )
        assert set(request.spec["tags"]) <= set(mine["tags"])
    for cancelled_id in cancelled:
        (request,) = [r for r in requests if r.id == cancelled_id]
        assert request.state in (S.CANCELLED, S.ACTIVE, S.FAILED)
    counters = stack.simulator.control.counters()
    assert sum(c["throttled"] for c in counters.values()) == 0
    assert counters["update"]["calls"] == 0  # servers are created under their final names


def unowned_story(stack, requests, by_id: dict, keeps: set) -> str:
    """What an operator would read to find the cause: each odd server and its request's timeline."""
    lines = ["a live server no request owns, or an owned one gone:"]
    by_marker_prefix = {f"o{r.id.hex[:12]}": r for r in requests}
    for server_id in sorted(set(by_id) ^ keeps):
        cloud = by_id.get(server_id, {})
        marker = cloud.get("metadata", {}).get(MARKER_METADATA_KEY) or ""
        lines.append(f"server {server_id} {cloud.get('name')} {cloud.get('status')} {marker}")
        owner = by_marker_prefix.get(marker.rsplit("a", 1)[0]) or next(
            (r for r in requests if server_id in (r.server_id, r.cleanup_server_id)), None
        )
        if owner is None:
            continue
        lines.append(f"  request {owner.id} {owner.state} marker={owner.create_marker} "
                     f"server={owner.server_id} error={owner.last_error_code}")  # fmt: skip
        with session_scope(stack.sessions) as session:
            for event in session.scalars(
                select(Event).where(Event.request_id == owner.id).order_by(Event.id)
            ):
                lines.append(f"  {event.at:%H:%M:%S.%f} {event.from_state}->{event.to_state} "
                             f"{event.detail}")  # fmt: skip
            for stray in session.scalars(
                select(StrayServer).where(StrayServer.request_id == owner.id)
            ):
                lines.append(f"  stray {stray.state} {stray.server_id} {stray.create_job_id} "
                             f"{stray.reason}")  # fmt: skip
    return "\n".join(lines)


def requests_state_known(request) -> bool:
    """A FAILED request says why; a finished one has no cloud work left in flight."""
    if request.state is S.FAILED and not (request.last_error_code and request.last_error_message):
        return False
    return request.create_intent_at is None or request.state is S.FAILED
