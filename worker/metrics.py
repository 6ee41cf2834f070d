"""Counters of the workers, kept in Redis, for the API's ``/metrics`` to expose.

Prometheus scrapes one process, the API; what it counts happens in many worker processes on
many machines. So each worker adds to a few Redis hashes (``HINCRBY`` is atomic: every process
everywhere adds to the same numbers) and the API's collector (``api/metrics.py``) reads them at
scrape time. The counters outlive a worker's restart and reset only with Redis, which
Prometheus's ``rate()`` treats like any counter reset.

What is counted here, and by whom:

- cloud calls per API class and outcome (``ok``, ``throttled``, ``error``): the client's
  response hook (:func:`call_outcome`, wired in ``worker/runtime.py``);
- limiter waits per API class, and the seconds waited: :class:`worker.limiter.GlobalLimiter`;
- step durations, per task and outcome, as histogram buckets: Celery's ``task_prerun`` and
  ``task_postrun`` signals (no step carries a hook of its own);
- chains the reconciler restarted: the return value of ``bms.reconcile``, read by the same
  signal;
- webhook attempts per outcome: ``tasks/webhooks.py``.

Writing a metric never fails a task: a Redis error is logged and forgotten.

Inside a task, writes wait for the task's end and go in one pipeline with its step duration:
one Redis round trip per task run instead of one per cloud call as well (issue 11: 5.7% of a
pool child's task time). A worker killed during a task loses that task's counts; a task is
short, and its step is counted as nothing either. Outside a task (the API, a test calling a
step directly), each write goes at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from celery.signals import task_postrun, task_prerun

log = logging.getLogger("bms.metrics")

PREFIX = "bms:metrics"
#: ``"<api class>|<outcome>"`` -> calls.
CALLS = f"{PREFIX}:calls"
#: ``<api class>`` -> calls held back by the limiter; and the seconds they were told to wait.
LIMITER_WAITS = f"{PREFIX}:limiter_waits"
LIMITER_WAIT_SECONDS = f"{PREFIX}:limiter_wait_seconds"
#: ``"<task>|<outcome>|<bucket index>"`` -> runs in that bucket (not cumulative), plus
#: ``"<task>|<outcome>|sum"`` (seconds) and ``"<task>|<outcome>|count"``.
STEPS = f"{PREFIX}:steps"
#: ``runs`` -> reconciler runs, ``restarts`` -> chains it restarted.
RECONCILER = f"{PREFIX}:reconciler"
#: ``<outcome>`` -> webhook POST attempts (``delivered``, ``failed``).
WEBHOOKS = f"{PREFIX}:webhooks"

#: Upper bounds (seconds) of the step duration buckets; ``+Inf`` is implied.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OUTCOMES = ("ok", "throttled", "error")


def call_outcome(status: int | None) -> str:
    """``ok`` for an answer below 400, ``throttled`` for 429, ``error`` otherwise (no answer
    at all, a timeout or a dropped connection, counts as an error)."""
    if status is None:
        return "error"
    if status == 429:
        return "throttled"
    return "ok" if status < 400 else "error"


def bucket_index(seconds: float) -> int:
    """The first bucket whose bound holds ``seconds``; ``len(STEP_BUCKETS)`` for ``+Inf``."""
    for index, bound in enumerate(STEP_BUCKETS):
        if seconds <= bound:
            return index
    return len(STEP_BUCKETS)


#: Writes held back in a task past this many go at once (a task that never ends, say).
MAX_HELD_WRITES = 1000

Write = tuple[str, Callable[[redis.client.Pipeline], None]]


class _TaskWrites(threading.local):
    """Whether this thread runs a task now, and the recorders holding writes until its end."""

    in_task: bool = False

    def __init__(self) -> None:
        self.holding: list[MetricsRecorder] = []


_task_writes = _TaskWrites()


class MetricsRecorder:
    """Adds to the counters in Redis; every method swallows Redis errors."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._held: list[Write] = []

    @classmethod
    def from_url(cls, url: str) -> MetricsRecorder:
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def _write(self, what: str, action: Callable[[redis.client.Pipeline], None]) -> None:
        if not _task_writes.in_task:
            self._send([(what, action)])
            return
        if not self._held:
            _task_writes.holding.append(self)
        self._held.append((what, action))
        if len(self._held) >= MAX_HELD_WRITES:
            self.flush()

    def flush(self) -> None:
        """Send the writes held back, in one pipeline."""
        held, self._held = self._held, []
        if held:
            self._send(held)

    def _send(self, writes: list[Write]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for _what, action in writes:
                action(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics %s not recorded: %s", ", ".join(w for w, _a in writes), exc)

    def call(self, api_class: str, status: int | None) -> None:
        field = f"{api_class}|{call_outcome(status)}"
        self._write("call", lambda p: p.hincrby(CALLS, field, 1))

    def limiter_wait(self, api_class: str, seconds: float) -> None:
        def add(pipe) -> None:
            pipe.hincrby(LIMITER_WAITS, api_class, 1)
            pipe.hincrbyfloat(LIMITER_WAIT_SECONDS, api_class, seconds)

        self._write("limiter wait", add)

    def step(self, task: str, outcome: str, seconds: float) -> None:
        key = f"{task}|{outcome}"

        def add(pipe) -> None:
            pipe.hincrby(STEPS, f"{key}|{bucket_index(seconds)}", 1)
            pipe.hincrbyfloat(STEPS, f"{key}|sum", seconds)
            pipe.hincrby(STEPS, f"{key}|count", 1)

        self._write("step", add)

    def reconciled(self, restarts: int) -> None:
        def add(pipe) -> None:
            pipe.hincrby(RECONCILER, "runs", 1)
            pipe.hincrby(RECONCILER, "restarts", restarts)

        self._write("reconciler", add)

    def webhook(self, outcome: str) -> None:
        self._write("webhook", lambda p: p.hincrby(WEBHOOKS, outcome, 1))


# -- Celery signals: step durations and reconciler restarts, for every task of this project ---

_started: dict[str, float] = {}
_recorders: dict[str, MetricsRecorder] = {}


def shared_recorder(url: str) -> MetricsRecorder:
    """This process's recorder for the Redis at ``url``: the cloud client's counts, the
    limiter's and the step durations go in one pipeline at a task's end."""
    if url not in _recorders:
        _recorders[url] = MetricsRecorder.from_url(url)
    return _recorders[url]


def _process_recorder() -> MetricsRecorder | None:
    from worker.settings import get_settings

    url = get_settings().redis_url
    return shared_recorder(url) if url else None


@task_prerun.connect
def _task_started(task_id: str | None = None, task=None, **_kwargs) -> None:
    _task_writes.in_task = True
    if task_id and task is not None and task.name.startswith("bms."):
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_finished(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    try:
        _record_step(task_id, task, retval, state)
    finally:
        _task_writes.in_task = False
        holding, _task_writes.holding = _task_writes.holding, []
        for recorder in holding:
            recorder.flush()


def _record_step(task_id, task, retval, state) -> None:
    started = _started.pop(task_id, None) if task_id else None
    if started is None or task is None:
        return
    recorder = _process_recorder()
    if recorder is None:
        return
    recorder.step(task.name, (state or "unknown").lower(), time.monotonic() - started)
    if task.name == "bms.reconcile" and isinstance(retval, int):
        recorder.reconciled(retval)
