"""Dispatch of a stored batch in chunks behind its watermark, and the batch reconciler.

Against a migrated database (both backends). The chains and ``bms.dispatch_batch`` messages
go to the session's Redis, where no worker takes them: the rows are what is checked.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

import tasks.plan
from bmsctl.processes import free_port
from models.records import Batch, BatchSource, ServerRequest
from models.spec import parse_batch
from tasks import batch_dispatch
from tasks.batch_dispatch import stalled_batch_ids
from tasks.control import cancel
from tasks.intake import submit
from tests.factories import batch, server
from worker.app import make_celery
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings


@pytest.fixture
def sessions(database, redis_url):
    return database.sessions


def stored_batch(sessions, size: int) -> uuid.UUID:
    spec = parse_batch(batch(*(server(name=f"node-{n}") for n in range(size))))
    return submit(sessions, spec, BatchSource.API).batch_id


def step(sessions, batch_id: uuid.UUID, position: int | None, size: int) -> int | None:
    """One run of the dispatch without a quota: the watermark the next run expects, or None."""
    fed = batch_dispatch.dispatch_chunk(sessions, batch_id, position, size)
    return fed.position if fed else None


def watermark(sessions, batch_id: uuid.UUID) -> int:
    with sessions() as session:
        return session.get(Batch, batch_id).dispatched_position


def fences(sessions, batch_id: uuid.UUID) -> list[int]:
    with sessions() as session:
        query = select(ServerRequest.fence).where(ServerRequest.batch_id == batch_id)
        return list(session.scalars(query.order_by(ServerRequest.position)))


@pytest.fixture
def worker_runtime(sessions, redis_url):
    """What the batch tasks read off ``runtime()``: settings (2 requests a chunk) and sessions."""
    settings = Settings(redis_url=redis_url, dispatch_chunk=2, dispatch_stall_seconds=30)
    use_runtime(Runtime(settings, sessions, limiter=None, client=None))
    yield settings
    use_runtime(None)


def test_chunks_move_the_watermark_to_the_end_each_chain_sent_once(sessions):
    batch_id = stored_batch(sessions, 5)

    positions = [step(sessions, batch_id, 0, size=2)]
    while positions[-1] is not None:
        positions.append(step(sessions, batch_id, positions[-1], size=2))

    assert positions == [2, 4, None]
    assert watermark(sessions, batch_id) == 5
    assert fences(sessions, batch_id) == [1] * 5  # one chain start each


def test_a_run_that_expects_another_watermark_stops(sessions):
    batch_id = stored_batch(sessions, 5)
    assert step(sessions, batch_id, 0, size=2) == 2

    # A redelivery of the first message: the watermark moved on, so it stops, sending nothing.
    assert step(sessions, batch_id, 0, size=2) is None
    assert watermark(sessions, batch_id) == 2
    assert fences(sessions, batch_id) == [1, 1, 0, 0, 0]


def test_a_dispatch_killed_midway_is_completed_by_the_batch_reconciler(sessions, worker_runtime):
    batch_id = stored_batch(sessions, 5)
    # The first chunk went out and the watermark moved; then the worker died before it sent
    # the task for the next chunk.
    assert step(sessions, batch_id, 0, size=2) == 2
    with sessions() as session:
        assert stalled_batch_ids(session, idle_seconds=30) == []  # not stalled for long yet
        assert stalled_batch_ids(session, idle_seconds=0) == [batch_id]

    stalled_for_long = worker_runtime.model_copy(update={"dispatch_stall_seconds": 1e-6})
    use_runtime(Runtime(stalled_for_long, sessions, limiter=None, client=None))
    assert batch_dispatch.reconcile_batches() == 1
    use_runtime(Runtime(worker_runtime, sessions, limiter=None, client=None))
    assert batch_dispatch.reconcile_batches() == 0  # the resume holds a lease meanwhile

    # The resume it sent: bms.dispatch_batch from whatever the watermark is.
    position = batch_dispatch.dispatch_batch(batch_id=str(batch_id), position=None)
    while position is not None:
        position = batch_dispatch.dispatch_batch(batch_id=str(batch_id), position=position)

    assert watermark(sessions, batch_id) == 5
    assert fences(sessions, batch_id) == [1] * 5
    with sessions() as session:
        assert stalled_batch_ids(session, idle_seconds=0) == []


def test_a_batch_never_dispatched_is_resumed_after_the_stall_time_not_ten_minutes(sessions):
    batch_id = stored_batch(sessions, 3)  # its dispatch_batch message was lost

    with sessions() as session:
        assert stalled_batch_ids(session, idle_seconds=0) == [batch_id]


def test_an_unreachable_broker_leaves_the_watermark_for_the_reconciler(sessions, monkeypatch):
    batch_id = stored_batch(sessions, 4)
    dead = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    monkeypatch.setattr(tasks.plan, "app", dead)

    assert step(sessions, batch_id, 0, size=2) is None

    assert watermark(sessions, batch_id) == 0
    monkeypatch.undo()
    assert step(sessions, batch_id, 0, size=2) == 2


def test_cancelled_requests_do_not_hold_the_dispatch_back(sessions):
    batch_id = stored_batch(sessions, 3)
    with sessions() as session:
        ids = list(
            session.scalars(
                select(ServerRequest.id)
                .where(ServerRequest.batch_id == batch_id)
                .order_by(ServerRequest.position)
            )
        )
    cancel(sessions, [ids[1]])

    assert step(sessions, batch_id, 0, size=3) is None

    assert watermark(sessions, batch_id) == 3
    assert fences(sessions, batch_id)[0] == 1 and fences(sessions, batch_id)[2] == 1


def test_the_batch_reconciler_restarts_a_batch_never_started_through_its_preflight(
    sessions, worker_runtime, monkeypatch
):
    never_started = stored_batch(sessions, 3)  # its bms.start_batch message was lost
    half_dispatched = stored_batch(sessions, 5)
    assert step(sessions, half_dispatched, 0, size=2) == 2
    sent = []
    monkeypatch.setattr(
        batch_dispatch,
        "send",
        lambda batch_id, _p, task, **_: sent.append((batch_id, task)) or True,
    )
    stalled_for_long = worker_runtime.model_copy(update={"dispatch_stall_seconds": 1e-6})
    use_runtime(Runtime(stalled_for_long, sessions, limiter=None, client=None))

    batch_dispatch.reconcile_batches()

    assert sorted(sent) == sorted(
        [(never_started, "bms.start_batch"), (half_dispatched, "bms.dispatch_batch")]
    )


def test_a_batch_with_nothing_to_dispatch_is_closed(sessions):
    batch_id = stored_batch(sessions, 3)

    batch_dispatch.close(sessions, batch_id)

    assert watermark(sessions, batch_id) == 3
    with sessions() as session:
        assert stalled_batch_ids(session, idle_seconds=0) == []
