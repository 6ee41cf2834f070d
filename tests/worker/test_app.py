"""The Celery app's choices that cost a worker work: task events only when asked for."""

from __future__ import annotations

from worker.app import make_celery
from worker.queues import ALL_QUEUES, CONTROL_QUEUE
from worker.settings import Settings

REDIS = "redis://127.0.0.1:1/0"  # never connected to: only the configuration is read


def test_task_events_are_off_unless_asked_for():
    quiet = make_celery(Settings(redis_url=REDIS)).conf
    asked = make_celery(Settings(redis_url=REDIS, task_events=True)).conf

    assert (quiet.worker_send_task_events, quiet.task_send_sent_event) == (False, False)
    assert (asked.worker_send_task_events, asked.task_send_sent_event) == (True, True)


def test_the_batch_reconciler_runs_with_the_reconciler():
    app = make_celery(Settings(redis_url=REDIS, reconcile_interval_seconds=7))
    schedule = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}

    assert schedule["bms.reconcile_batches"]["schedule"] == 7
    assert schedule["bms.reconcile_batches"]["options"] == {"queue": "bms.control"}


def test_workers_take_creates_then_the_feeder_before_other_work():
    conf = make_celery(Settings(redis_url=REDIS)).conf

    # Not round robin: a create booked for an instant must not wait behind polls and steps.
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert ALL_QUEUES[:2] == ("bms.create", CONTROL_QUEUE)
    assert [queue.name for queue in conf.task_queues] == list(ALL_QUEUES)
