"""Webhooks end to end: real workers and beat, the simulator, and a local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from models.db import session_scope
from models.webhooks import DeliveryState, WebhookDelivery, WebhookEvent
from tests.api.helpers import TOKEN, api_settings
from tests.factories import batch, server
from worker import metrics as metric_keys
from worker.queues import ALL_QUEUES, WEBHOOK_QUEUE

pytestmark = pytest.mark.e2e

SECRET = "whsec-0123456789abcdef-for-tests"
#: Beat looks for completed batches this often in these tests.
FAST_SCAN = {"BMS_WEBHOOK_SCAN_SECONDS": "0.5"}


def deliveries(stack, batch_id: uuid.UUID) -> list[WebhookDelivery]:
    with session_scope(stack.sessions) as session:
        query = select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
        return list(session.scalars(query.order_by(WebhookDelivery.created_at)))


def verifies(post, secret: str) -> bool:
    """What a receiver does: HMAC-SHA256 of ``<timestamp>.<body>``, compared in constant time."""
    signed = post.headers["X-BMS-Timestamp"].encode() + b"." + post.body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, post.headers["X-BMS-Signature"])


def scans_run(stack) -> int:
    steps = redis.Redis.from_url(stack.redis_url).hgetall(metric_keys.STEPS)
    return int(steps.get(b"bms.webhook_scan|success|count", 0))


def test_a_receiver_failing_twice_gets_one_accepted_signed_delivery(
    stack_factory, receiver_factory
):
    stack = stack_factory()
    receiver = receiver_factory(answers=[500, 503])
    stack.start_worker("all", concurrency=3)
    stack.start_beat(**FAST_SCAN)
    notify = {"url": receiver.url, "secret": SECRET}
    submitted = stack.submit(batch(server(name="hooked", count=2), notify=notify))

    stack.wait_until_finished(submitted.batch_id, timeout=90)
    stack.wait_for(
        lambda: (
            [d.state for d in deliveries(stack, submitted.batch_id)] == [DeliveryState.DELIVERED]
        ),
        60,
        "the completion to be delivered",
    )
    # Let beat scan twice more: a second completion or a re-send would show by now.
    settled = scans_run(stack)
    stack.wait_for(lambda: scans_run(stack) >= settled + 2, 30, "two more scans")

    posts = receiver.posts()
    assert [p.answered for p in posts] == [500, 503, 200]
    assert len({p.headers["X-BMS-Delivery"] for p in posts}) == 1
    assert [p.headers["X-BMS-Attempt"] for p in posts] == ["1", "2", "3"]
    assert all(verifies(p, SECRET) for p in posts)
    assert not verifies(posts[0], "another-secret-of-16+chars")
    event = json.loads(posts[-1].body)
    assert event["type"] == "batch.completed" and event["batch"]["id"] == str(submitted.batch_id)
    assert event["batch"]["counts"]["ACTIVE"] == 2 and event["batch"]["total"] == 2
    assert posts[-1].headers["X-BMS-Event"] == "batch.completed"
    [delivery] = deliveries(stack, submitted.batch_id)
    assert (delivery.attempts, delivery.last_status) == (3, 200)

    api = TestClient(
        create_app(api_settings(stack.database_url, stack.redis_url, api_token=TOKEN)),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    shown = api.get(f"/v1/batches/{submitted.batch_id}/webhooks")
    assert shown.status_code == 200
    view = shown.json()
    assert view["notify"] == {
        "url": receiver.url,
        "has_secret": True,
        "request_events": False,
        "completions": 1,
    }
    assert view["counts"]["DELIVERED"] == 1
    assert view["deliveries"][0]["attempts"] == 3 and view["deliveries"][0]["last_status"] == 200
    # The secret is in no answer, no message and no log line.
    assert SECRET not in shown.text + api.get(f"/v1/batches/{submitted.batch_id}").text
    for worker in stack.workers:
        assert SECRET not in worker.log_path.read_text(errors="replace")


def test_a_receiver_that_is_down_does_not_delay_the_batch(stack_factory, receiver_factory):
    stack = stack_factory()
    receiver = receiver_factory(hang=True)  # every attempt ends in the sender's timeout
    provisioning = tuple(q for q in ALL_QUEUES if q != WEBHOOK_QUEUE)
    stack.start_worker("cloud", concurrency=3, queues=provisioning)
    stack.start_worker("hooks", concurrency=1, queues=(WEBHOOK_QUEUE,))
    stack.start_beat(**FAST_SCAN)
    notify = {"url": receiver.url, "request_events": True}
    submitted = stack.submit(batch(server(name="unheard", count=3), notify=notify))

    requests = stack.wait_until_finished(submitted.batch_id, timeout=90)

    assert {r.state.value for r in requests} == {"ACTIVE"}
    # Every request's final transition made its event at once, none of them accepted.
    stack.wait_for(
        lambda: any(
            d.event is WebhookEvent.BATCH_COMPLETED for d in deliveries(stack, submitted.batch_id)
        ),
        30,
        "the completion event",
    )
    made = deliveries(stack, submitted.batch_id)
    per_request = [d for d in made if d.event is WebhookEvent.REQUEST_FINISHED]
    assert sorted(str(d.request_id) for d in per_request) == sorted(str(r.id) for r in requests)
    assert all(d.payload["request"]["state"] == "ACTIVE" for d in per_request)
    assert {d.state for d in made} == {DeliveryState.PENDING}
    assert receiver.posts()  # the receiver was tried (and held the only webhook slot)
    assert "X-BMS-Signature" not in receiver.posts()[0].headers  # no secret, no signature
