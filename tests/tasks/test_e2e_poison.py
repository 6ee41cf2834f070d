"""Hostile and poison ``bms.submit_batch`` messages, sent over the broker to real workers.

No message, whatever it holds, may stop a worker process or come back forever; a redelivery of
a stored batch stores nothing; the key is held to the API's rules.
"""

from __future__ import annotations

import pytest
from celery.result import AsyncResult
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from models.db import session_scope
from models.records import Batch
from tests.api.helpers import api_settings
from tests.factories import batch, server
from worker.app import app
from worker.fault_hooks import KILL_AFTER_SUBMIT, KILL_SUBMITTING

pytestmark = pytest.mark.e2e


def send(payload: dict, **kwargs) -> AsyncResult:
    return app.send_task("bms.submit_batch", kwargs={"batch": payload, **kwargs})


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def batches(stack) -> int:
    with session_scope(stack.sessions) as session:
        return session.scalar(select(func.count()).select_from(Batch))


def test_deep_nesting_is_answered_and_the_worker_lives_on(stack_factory):
    stack = stack_factory()
    worker = stack.start_worker("control", concurrency=1)

    # 600 levels: refused in the main process, before the pool (where pickling it crashed).
    deepest = send(batch(server(), defaults={"metadata": nested(600)})).get(timeout=60)
    # 36 levels: fits the message's bound, refused in the pool by the spec.
    deep = send(batch(server(), defaults={"metadata": nested(36)})).get(timeout=60)
    after = send(batch(server(name="after"))).get(timeout=60)

    for answer in (deepest, deep):
        ((field, message),) = answer["errors"]
        assert field.startswith("defaults.metadata.x") and message == "nested deeper than 32 levels"
    assert after["created"] is True
    assert batches(stack) == 1
    assert worker.alive(), worker.tail()


def test_a_message_that_kills_its_worker_is_dead_lettered_with_its_reason(stack_factory):
    stack = stack_factory()
    worker = stack.start_worker(
        "control", concurrency=1, **{KILL_SUBMITTING: "poison", "BMS_MAX_DELIVERIES": "3"}
    )

    poison = send(batch(server(), name="poison"))
    answer = poison.get(timeout=120)
    after = send(batch(server(name="after"))).get(timeout=60)

    ((field, message),) = answer["errors"]
    assert field == "<message>" and "dead-lettered" in message and "WorkerLostError" in message
    assert after["created"] is True and batches(stack) == 1
    assert worker.alive(), worker.tail()
    api = TestClient(create_app(api_settings(stack.database_url, stack.redis_url), stack.sessions))
    page = api.get("/v1/dead-letters").json()
    api.close()
    ((letter,),) = [page["items"]]
    assert (page["total"], letter["task_id"], letter["task_name"]) == (
        1,
        poison.id,
        "bms.submit_batch",
    )
    assert letter["deliveries"] == 3 and "SIGKILL" in letter["reason"]
    assert '"poison"' in letter["excerpt"]


def test_a_redelivery_after_the_commit_stores_no_second_batch(stack_factory, tmp_path):
    token = tmp_path / "kill-after-submit"
    token.touch()
    stack = stack_factory()
    stack.start_worker("control", concurrency=1, **{KILL_AFTER_SUBMIT: str(token)})

    answer = send(batch(server(name="once"))).get(timeout=120)  # no idempotency key

    assert not token.exists(), "the worker process was not killed after storing the batch"
    assert answer["created"] is False  # the redelivery found the batch of the first delivery
    assert batches(stack) == 1


def test_the_idempotency_key_is_held_to_the_apis_rules(stack_factory):
    stack = stack_factory()
    stack.start_worker("control", concurrency=1)
    cases = [("k" * 10_000, "1 to 128 characters"), (42, "a string"), ("a\x00b", "control")]

    answers = [send(batch(server()), idempotency_key=key).get(timeout=60) for key, _ in cases]

    for answer, (_key, message) in zip(answers, cases, strict=True):
        assert answer["errors"][0][0] == "idempotency_key" and message in answer["errors"][0][1]
    assert batches(stack) == 0
