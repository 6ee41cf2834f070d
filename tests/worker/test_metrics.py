"""The workers' counters: written at once outside a task; a task's summed and sent at its end, at
most every half second per process."""

from __future__ import annotations

import pytest
import redis
from celery.signals import task_postrun, task_prerun, worker_process_shutdown

from worker.metrics import (
    CALLS,
    LIMITER_WAITS,
    SEND_EVERY_SECONDS,
    STEPS,
    MetricsRecorder,
    shared_recorder,
)


class _Task:
    name = "bms.poll_create_job"


def pipelines_sent(recorder: MetricsRecorder, monkeypatch) -> list[int]:
    """How many pipelines the recorder sends (one Redis round trip each)."""
    sent: list[int] = []
    original = redis.client.Pipeline.execute

    def execute(pipe, *args, **kwargs):
        sent.append(len(pipe.command_stack))
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    return sent


def test_outside_a_task_each_count_goes_at_once(redis_url, monkeypatch):
    recorder = MetricsRecorder.from_url(redis_url)
    recorder._redis.delete(CALLS)
    sent = pipelines_sent(recorder, monkeypatch)

    recorder.call("show", 200)
    recorder.call("show", 429)

    assert sent == [1, 1]
    assert recorder._redis.hgetall(CALLS) == {b"show|ok": b"1", b"show|throttled": b"1"}


def test_a_tasks_counts_go_with_its_step_in_one_round_trip(redis_url, monkeypatch):
    # Issue 11: one HINCRBY round trip per cloud call was 5.7% of a pool child's task time.
    recorder = shared_recorder(redis_url)
    monkeypatch.setattr("worker.metrics._process_recorder", lambda: recorder)
    for key in (CALLS, LIMITER_WAITS, STEPS):
        recorder._redis.delete(key)
    sent = pipelines_sent(recorder, monkeypatch)

    task_prerun.send(sender=_Task, task_id="t-1", task=_Task)
    recorder.call("job", 200)
    recorder.call("show", 200)
    recorder.limiter_wait("create", 0.5)
    assert sent == [] and recorder._redis.hgetall(CALLS) == {}  # held until the task ends
    task_postrun.send(sender=_Task, task_id="t-1", task=_Task, state="SUCCESS")

    assert sent == [2 + 2 + 3]  # two calls, a wait (count and seconds), the step's three
    assert recorder._redis.hgetall(CALLS) == {b"job|ok": b"1", b"show|ok": b"1"}
    assert recorder._redis.hget(LIMITER_WAITS, "create") == b"1"
    assert recorder._redis.hget(STEPS, "bms.poll_create_job|success|count") == b"1"

    recorder.call("job", 200)  # after the task: at once again
    assert sent == [7, 1]


class _Timers:
    """Stands in for ``threading.Timer``: records the timers armed, runs one when told."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, object]] = []

    def __call__(self, interval, function):
        self.armed.append((interval, function))
        return self

    daemon = False

    def start(self) -> None:
        pass

    def fire(self) -> None:
        _interval, function = self.armed[-1]
        function()


def one_task(recorder: MetricsRecorder, task_id: str) -> None:
    task_prerun.send(sender=_Task, task_id=task_id, task=_Task)
    recorder.call("job", 200)
    task_postrun.send(sender=_Task, task_id=task_id, task=_Task, state="SUCCESS")


@pytest.fixture
def fresh_recorder(redis_url, monkeypatch):
    recorder = MetricsRecorder.from_url(redis_url)
    monkeypatch.setattr("worker.metrics._process_recorder", lambda: recorder)
    for key in (CALLS, STEPS):
        recorder._redis.delete(key)
    return recorder


def test_tasks_ending_within_half_a_second_share_one_send(fresh_recorder, monkeypatch):
    # Issue 11: a pipeline per task run was 5% of a pool child's CPU.
    timers = _Timers()
    monkeypatch.setattr("worker.metrics.threading.Timer", timers)
    sent = pipelines_sent(fresh_recorder, monkeypatch)

    one_task(fresh_recorder, "t-1")  # the first goes at once
    one_task(fresh_recorder, "t-2")
    one_task(fresh_recorder, "t-3")

    assert sent == [1 + 3]
    assert len(timers.armed) == 1 and 0 < timers.armed[0][0] <= SEND_EVERY_SECONDS
    timers.fire()
    assert sent == [4, 1 + 3]  # the two tasks' counts, summed field by field
    assert fresh_recorder._redis.hget(CALLS, "job|ok") == b"3"
    assert fresh_recorder._redis.hget(STEPS, "bms.poll_create_job|success|count") == b"3"


def test_a_process_shutting_down_sends_what_its_tasks_summed(fresh_recorder, monkeypatch):
    monkeypatch.setattr("worker.metrics.threading.Timer", _Timers())
    one_task(fresh_recorder, "t-1")
    one_task(fresh_recorder, "t-2")  # left to a timer that never fires
    assert fresh_recorder._redis.hget(CALLS, "job|ok") == b"1"

    worker_process_shutdown.send(sender=None, pid=1, exitcode=0)

    assert fresh_recorder._redis.hget(CALLS, "job|ok") == b"2"
