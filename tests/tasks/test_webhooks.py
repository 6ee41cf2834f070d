"""Webhooks against a migrated database (both backends): the events a transition makes, batch
completion, one delivery attempt against a local receiver, the ``notify`` of a batch."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from models.base import as_utc, utcnow
from models.records import ServerRequest, record_note, transition
from models.spec import parse_batch
from models.states import RequestState, Step
from models.webhooks import DeliveryState, WebhookDelivery, WebhookEvent, WebhookTarget
from tasks import webhooks
from tasks.control import retry
from tasks.intake import submit_batch
from tests.factories import add_request, batch, server
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings

S = RequestState
SECRET = "a-secret-of-more-than-16-chars"


@pytest.fixture
def sessions(database, redis_url):
    settings = Settings(database_url=database.url, redis_url=redis_url)
    use_runtime(Runtime(settings, database.sessions, limiter=None, client=None))
    yield database.sessions
    use_runtime(None)


def with_target(session, request: ServerRequest, url: str = "http://127.0.0.1:9/x", **fields):
    session.add(WebhookTarget(batch_id=request.batch_id, url=url, **fields))
    session.commit()


def all_deliveries(sessions) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def finish(sessions, request_id, *path: RequestState) -> None:
    with sessions() as session:
        request = session.get(ServerRequest, request_id)
        for state in path:
            transition(session, request, state)
        session.commit()


def test_a_final_transition_makes_a_request_event_in_its_transaction(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request, request_events=True)
    finish(sessions, request.id, S.CREATING, S.BUILDING)
    assert all_deliveries(sessions) == []  # not final yet
    with sessions() as session:
        record_note(session, session.get(ServerRequest, request.id), "a note is no transition")
        session.commit()

    finish(sessions, request.id, S.CANCELLED)

    [delivery] = all_deliveries(sessions)
    assert (delivery.event, delivery.request_id) == (WebhookEvent.REQUEST_FINISHED, request.id)
    assert delivery.payload["request"]["state"] == "CANCELLED"
    assert delivery.payload["id"] == str(delivery.id)


def test_a_rolled_back_transition_leaves_no_event(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request, request_events=True)
        transition(session, session.get(ServerRequest, request.id), S.CANCELLED)
        session.flush()
        session.rollback()
    assert all_deliveries(sessions) == []


def test_request_events_only_when_asked(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request, request_events=False)
    finish(sessions, request.id, S.CANCELLED)
    assert all_deliveries(sessions) == []


def test_a_batch_completes_once_and_again_after_a_retry(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request)
    batch_id = request.batch_id
    with sessions() as session:
        assert webhooks.complete_batch(session, batch_id) is None  # PENDING: not settled
    finish(sessions, request.id, S.CREATING)
    with sessions() as session:
        failed = session.get(ServerRequest, request.id)
        failed.failed_step, failed.last_error_code = Step.CREATE, "BMS.0218"
        failed.last_error_message = "flavor sold out"
        transition(session, failed, S.FAILED)
        session.commit()

    with sessions() as session:
        first = webhooks.complete_batch(session, batch_id)
        again = webhooks.complete_batch(session, batch_id)
        session.commit()
    assert first is not None and again is None
    [delivery] = all_deliveries(sessions)
    assert delivery.payload["batch"]["counts"]["FAILED"] == 1
    assert delivery.payload["batch"]["failures"] == [
        {"code": "BMS.0218", "message": "flavor sold out", "count": 1}
    ]

    retry(sessions, [request.id])
    with sessions() as session:
        assert webhooks.reopen_retried(session) == 1
        session.commit()
    finish(sessions, request.id, S.CANCELLED)
    with sessions() as session:
        assert webhooks.complete_batch(session, batch_id) is not None
        session.commit()
        assert session.get(WebhookTarget, batch_id).completions == 2
    keys = sorted(d.dedupe_key for d in all_deliveries(sessions))
    assert keys == [f"batch.completed:{batch_id}:1", f"batch.completed:{batch_id}:2"]


PROVISIONED = (S.CREATING, S.BUILDING, S.TAGGING, S.ACTIVE)


def test_a_teardown_sends_request_torn_down_never_a_second_request_finished(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request, request_events=True)
    finish(sessions, request.id, *PROVISIONED)

    finish(sessions, request.id, S.TEARING_DOWN)  # started: no event
    assert [d.event for d in all_deliveries(sessions)] == [WebhookEvent.REQUEST_FINISHED]
    finish(sessions, request.id, S.FAILED)  # the cloud refused the delete
    finish(sessions, request.id, S.TEARING_DOWN, S.TORN_DOWN)  # taken again, done

    deliveries = all_deliveries(sessions)
    assert [(d.event, d.payload["request"]["state"]) for d in deliveries] == [
        (WebhookEvent.REQUEST_FINISHED, "ACTIVE"),
        (WebhookEvent.REQUEST_TORN_DOWN, "FAILED"),
        (WebhookEvent.REQUEST_TORN_DOWN, "TORN_DOWN"),
    ]
    assert deliveries[-1].payload["type"] == "request.torn_down"


def test_a_teardown_neither_reopens_nor_completes_the_batch_again(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request)
    finish(sessions, request.id, *PROVISIONED)
    with sessions() as session:
        assert webhooks.complete_batch(session, request.batch_id) is not None
        session.commit()

    for state in (S.TEARING_DOWN, S.TORN_DOWN):
        finish(sessions, request.id, state)
        with sessions() as session:
            assert webhooks.reopen_retried(session) == 0
            assert webhooks.complete_batch(session, request.batch_id) is None
            session.commit()

    assert [d.event for d in all_deliveries(sessions)] == [WebhookEvent.BATCH_COMPLETED]


def test_a_teardown_under_way_does_not_hold_back_the_first_completion(sessions):
    with sessions() as session:
        request = add_request(session)
        with_target(session, request)
    finish(sessions, request.id, *PROVISIONED, S.TEARING_DOWN)  # before the scan came by

    with sessions() as session:
        assert webhooks.complete_batch(session, request.batch_id) is not None
        session.commit()
    [delivery] = all_deliveries(sessions)
    assert delivery.payload["batch"]["counts"]["TEARING_DOWN"] == 1


def pending_delivery(sessions, url: str, secret: str | None = None, age=timedelta(0)):
    with sessions() as session:
        request = add_request(session, S.ACTIVE)
        with_target(session, request, url=url, secret=secret)
        delivery = WebhookDelivery(
            batch_id=request.batch_id,
            event=WebhookEvent.BATCH_COMPLETED,
            dedupe_key=f"test:{uuid.uuid4()}",
            payload={"type": "batch.completed"},
            next_attempt_at=utcnow(),
            created_at=utcnow() - age,
        )
        session.add(delivery)
        session.commit()
        return delivery.id


def reload(sessions, delivery_id) -> WebhookDelivery:
    with sessions() as session:
        return session.get(WebhookDelivery, delivery_id)


def test_an_accepted_delivery_is_recorded_and_never_sent_again(sessions, receiver_factory):
    receiver = receiver_factory()
    delivery_id = pending_delivery(sessions, receiver.url, SECRET)

    assert webhooks.deliver_webhook.run(delivery_id=str(delivery_id)) == "DELIVERED"
    assert webhooks.deliver_webhook.run(delivery_id=str(delivery_id)) == "skipped"

    stored = reload(sessions, delivery_id)
    assert (stored.state, stored.attempts, stored.last_status) == (DeliveryState.DELIVERED, 1, 200)
    [post] = receiver.posts()
    timestamp = post.headers["X-BMS-Timestamp"]
    assert post.headers["X-BMS-Signature"] == webhooks.signature(SECRET, timestamp, post.body)


def test_a_refused_delivery_is_scheduled_again_then_given_up_after_a_day(
    sessions, receiver_factory
):
    receiver = receiver_factory(answers=[500, 500])
    fresh = pending_delivery(sessions, receiver.url)
    old = pending_delivery(sessions, receiver.url, age=timedelta(hours=24))

    assert webhooks.deliver_webhook.run(delivery_id=str(fresh)) == "PENDING"
    assert webhooks.deliver_webhook.run(delivery_id=str(old)) == "FAILED"

    pending = reload(sessions, fresh)
    assert (pending.attempts, pending.last_status, pending.last_error) == (1, 500, "HTTP 500")
    assert as_utc(pending.next_attempt_at) > utcnow() - timedelta(seconds=1)
    assert pending.leased_until is None
    # Not due yet: a duplicate message does nothing.
    assert webhooks.deliver_webhook.run(delivery_id=str(fresh)) == "skipped"


def test_a_receiver_that_is_not_there_is_an_attempt_without_status(sessions):
    delivery_id = pending_delivery(sessions, "http://127.0.0.1:9/nothing-listens")
    assert webhooks.deliver_webhook.run(delivery_id=str(delivery_id)) == "PENDING"
    stored = reload(sessions, delivery_id)
    assert (stored.last_status, stored.last_error) == (None, "ConnectionError")


def test_backoff_doubles_up_to_ten_minutes():
    assert 5 <= webhooks.backoff_seconds(1, 1.0) <= 6
    assert 10 <= webhooks.backoff_seconds(2, 1.0) <= 12
    assert 600 <= webhooks.backoff_seconds(30, 1.0) <= 720


def test_the_task_intake_takes_notify_apart_and_stores_it(sessions):
    notify = {"url": "https://hooks.example.com/bms", "secret": SECRET, "request_events": True}
    answer = submit_batch.run(batch(server()), notify=notify)
    with sessions() as session:
        target = session.get(WebhookTarget, uuid.UUID(answer["batch_id"]))
    assert (target.url, target.secret, target.request_events) == (notify["url"], SECRET, True)


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "http:// or https://"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "must not carry credentials"),
        ({"url": "https:///no-host"}, "must name a host"),
        ({"url": "https://hooks.example.com/a b"}, "spaces"),
        ({"url": "https://hooks.example.com:99999/x"}, "invalid port"),
        ({"url": "https://hooks.example.com/x", "secret": "short-secret"}, "at least 16"),
        ({"url": "https://hooks.example.com/x", "verbose": True}, "Extra inputs"),
    ],
)
def test_a_bad_notify_names_its_field(notify, message):
    with pytest.raises(ValueError) as caught:
        parse_batch(batch(server(), notify=notify))
    [(field, said)] = caught.value.errors
    assert field.startswith("notify.") and message in said
    assert "short-secret" not in str(caught.value)
