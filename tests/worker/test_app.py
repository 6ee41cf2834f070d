"""The Celery app's choices that cost a worker work: task events only when asked for."""

from __future__ import annotations

from kombu.utils.scheduling import cycle_by_name

from worker.app import make_celery
from worker.queues import ALL_QUEUES, CONTROL_QUEUE, CreatesFirst
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


def test_beat_folds_the_counter_rows_on_its_own_period():
    app = make_celery(Settings(redis_url=REDIS, counts_fold_seconds=11))
    schedule = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}

    assert schedule["bms.fold_counts"]["schedule"] == 11
    assert schedule["bms.fold_counts"]["options"] == {"queue": CONTROL_QUEUE}
    assert "tasks.counts" in app.conf.include


def test_workers_take_creates_then_the_feeder_before_other_work():
    conf = make_celery(Settings(redis_url=REDIS)).conf

    # A create booked for an instant must not wait behind polls and steps.
    strategy = conf.broker_transport_options["queue_order_strategy"]
    assert cycle_by_name(strategy) is CreatesFirst
    assert ALL_QUEUES[:2] == ("bms.create", CONTROL_QUEUE)
    assert [queue.name for queue in conf.task_queues] == list(ALL_QUEUES)


def taken(cycle: CreatesFirst, nonempty: set[str]) -> str:
    """The queue kombu's Redis transport takes next: BRPOP answers from the first non-empty
    key in the cycle's order, and the transport then rotates the cycle."""
    queue = next(name for name in cycle.consume(len(cycle.items)) if name in nonempty)
    cycle.rotate(queue)
    return queue


def test_a_backlog_in_one_queue_never_starves_the_others_but_creates_go_first():
    # 2,000 attaches waiting for quota keep bms.attach full: with a fixed order ahead of
    # bms.job ("priority"), job polls and tags waited over a minute behind them.
    cycle = cycle_by_name("worker.queues:CreatesFirst")()
    cycle.update(["bms.attach", "bms.job", "bms.nova", "bms.create", CONTROL_QUEUE])

    others = [taken(cycle, {"bms.attach", "bms.job", "bms.nova"}) for _ in range(6)]
    assert sorted(others) == sorted(["bms.attach", "bms.job", "bms.nova"] * 2)
    assert taken(cycle, {"bms.attach", "bms.job", "bms.create"}) == "bms.create"
    assert taken(cycle, {"bms.attach", "bms.create", CONTROL_QUEUE}) == "bms.create"
    assert taken(cycle, {"bms.attach", CONTROL_QUEUE}) == CONTROL_QUEUE
