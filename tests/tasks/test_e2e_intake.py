"""The intake task ``bms.submit_batch``, sent by name as another system would, to real workers."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.records import Batch, BatchSource, Event, ServerRequest
from models.states import RequestState
from tests.factories import batch, server
from worker.app import app
from worker.fault_hooks import KILL_AFTER_DISPATCH_CHUNK

pytestmark = pytest.mark.e2e


def send(payload: dict, key: str | None = None) -> dict:
    result = app.send_task("bms.submit_batch", kwargs={"batch": payload, "idempotency_key": key})
    return result.get(timeout=60)


def count_rows(stack) -> int:
    with session_scope(stack.sessions) as session:
        return session.scalar(select(func.count()).select_from(ServerRequest))


def test_a_batch_sent_by_name_is_provisioned_once_per_key(stack_factory):
    stack = stack_factory()
    stack.start_worker("all", concurrency=2)
    payload = batch(server(name="intake", count=3, tags=["from-broker"]))

    first = send(payload, key="order-42")
    again = send(payload, key="order-42")

    assert first["created"] is True and again["created"] is False
    assert again["batch_id"] == first["batch_id"]
    requests = stack.wait_until_finished(uuid.UUID(first["batch_id"]), timeout=90)
    assert [r.state for r in requests] == [RequestState.ACTIVE] * 3
    with session_scope(stack.sessions) as session:
        stored = session.get(Batch, uuid.UUID(first["batch_id"]))
        assert stored.source is BatchSource.TASK
    assert count_rows(stack) == 3
    assert len(stack.simulator.control.servers()) == 3


def test_an_invalid_batch_names_its_fields_and_stores_nothing(stack_factory):
    stack = stack_factory()
    stack.start_worker("all", concurrency=1)

    answer = send(batch(server(nics=[{"subnet_id": ""}], count=0)))

    fields = {field for field, _message in answer["errors"]}
    assert {"servers[0].nics[0].subnet_id", "servers[0].count"} <= fields
    assert count_rows(stack) == 0


def test_a_dispatch_killed_between_chunks_is_completed_by_the_batch_reconciler(
    stack_factory, tmp_path
):
    token = tmp_path / "kill-token"
    token.write_text("armed")
    stack = stack_factory()
    # Chunks of 4; a quick batch reconciler. The request reconciler keeps its 10 minutes, so
    # only the batch reconciler can finish this dispatch within the test's time.
    settings = {
        "BMS_DISPATCH_CHUNK": "4",
        "BMS_DISPATCH_STALL_SECONDS": "2",
        "BMS_RECONCILE_INTERVAL_SECONDS": "1",
        "BMS_RECONCILE_AFTER_SECONDS": "600",
    }
    stack.start_worker("all", concurrency=2, **settings, **{KILL_AFTER_DISPATCH_CHUNK: str(token)})
    stack.start_beat(**settings)

    submitted = stack.submit(batch(*(server(name=f"chunked-{n:02d}") for n in range(10))))
    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert not token.exists(), "the crash hook never fired"
    assert [r.state for r in requests] == [RequestState.ACTIVE] * 10
    assert len(stack.simulator.control.servers()) == 10
    with session_scope(stack.sessions) as session:
        stored = session.get(Batch, submitted.batch_id)
        assert stored.dispatched_position == stored.request_count == 10
        firsts = session.scalar(
            select(func.count()).select_from(Event).where(Event.from_state.is_(None))
        )
    assert firsts == 10  # one "submitted" event per request, however often a chunk was sent
