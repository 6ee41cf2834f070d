"""The workers' counters: written at once outside a task, in one pipeline at a task's end."""

from __future__ import annotations

import redis
from celery.signals import task_postrun, task_prerun

from worker.metrics import CALLS, LIMITER_WAITS, STEPS, MetricsRecorder, shared_recorder


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
