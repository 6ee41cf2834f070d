"""The intake task ``bms.submit_batch``, sent by name as another system would, to real workers."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.records import Batch, BatchSource, ServerRequest
from models.states import RequestState
from tests.factories import batch, server
from worker.app import app

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
