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

Inside a task, counts are summed in the process and sent when the task ends, at most every
:data:`SEND_EVERY_SECONDS`: a task that ends sooner after the last send leaves them to a
timer. One Redis round trip per process and half second instead of one per task run (issue 11:
a pipeline per task run was 5% of a pool child's CPU; one per cloud call before that, 5.7%).
What a process summed is also sent when it shuts down; a process killed loses what it summed
since its last send (at most half a second of counts). Outside a task (the API, a test calling
a step directly), each write goes at once.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import redis
from celery.signals import task_postrun, task_prerun, worker_process_shutdown

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


#: A process sends what its tasks counted at most this often (see the module's docstring).
SEND_EVERY_SECONDS = 0.5

#: ``(hash, field) -> amount``: an ``int`` goes by HINCRBY, a ``float`` by HINCRBYFLOAT.
Counts = dict[tuple[str, str], int | float]


class _TaskState(threading.local):
    """Whether this thread runs a task now, and the recorders its task counted in."""

    in_task: bool = False

    def __init__(self) -> None:
        self.counted: set[MetricsRecorder] = set()


_task_state = _TaskState()
#: Every recorder of this process, for the send at its shutdown.
_every_recorder: weakref.WeakSet[MetricsRecorder] = weakref.WeakSet()


class MetricsRecorder:
    """Adds to the counters in Redis; every method swallows Redis errors."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._lock = threading.Lock()
        self._summed: Counts = {}
        self._last_sent = 0.0  # monotonic; the first task's counts go at its end
        self._timer: threading.Timer | None = None
        _every_recorder.add(self)

    @classmethod
    def from_url(cls, url: str) -> MetricsRecorder:
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def _add(self, counts: Counts) -> None:
        if not _task_state.in_task:
            self._send(counts)
            return
        _task_state.counted.add(self)
        with self._lock:
            for key, amount in counts.items():
                self._summed[key] = self._summed.get(key, 0) + amount

    def task_ended(self) -> None:
        """Send what was summed, unless the last send was less than
        :data:`SEND_EVERY_SECONDS` ago: then a timer sends it when that time is up."""
        with self._lock:
            if self._timer is not None:
                return  # armed: it sends this task's counts too
            wait = self._last_sent + SEND_EVERY_SECONDS - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Send what was summed, in one pipeline."""
        with self._lock:
            summed, self._summed = self._summed, {}
            self._timer = None
            self._last_sent = time.monotonic()
        if summed:
            self._send(summed)

    def _send(self, counts: Counts) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for (key, field), amount in counts.items():
                if isinstance(amount, float):
                    pipe.hincrbyfloat(key, field, amount)
                else:
                    pipe.hincrby(key, field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics %s not recorded: %s", ", ".join(sorted({k for k, _f in counts})),
                      exc)  # fmt: skip

    def call(self, api_class: str, status: int | None) -> None:
        self._add({(CALLS, f"{api_class}|{call_outcome(status)}"): 1})

    def limiter_wait(self, api_class: str, seconds: float) -> None:
        self._add(
            {(LIMITER_WAITS, api_class): 1, (LIMITER_WAIT_SECONDS, api_class): float(seconds)}
        )

    def step(self, task: str, outcome: str, seconds: float) -> None:
        key = f"{task}|{outcome}"
        self._add({
            (STEPS, f"{key}|{bucket_index(seconds)}"): 1,
            (STEPS, f"{key}|sum"): float(seconds),
            (STEPS, f"{key}|count"): 1,
        })  # fmt: skip

    def reconciled(self, restarts: int) -> None:
        self._add({(RECONCILER, "runs"): 1, (RECONCILER, "restarts"): restarts})

    def webhook(self, outcome: str) -> None:
        self._add({(WEBHOOKS, outcome): 1})


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
    _task_state.in_task = True
    if task_id and task is not None and task.name.startswith("bms."):
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_finished(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    try:
        _record_step(task_id, task, retval, state)
    finally:
        _task_state.in_task = False
        counted, _task_state.counted = _task_state.counted, set()
        for recorder in counted:
            recorder.task_ended()


@worker_process_shutdown.connect
def _process_ending(**_kwargs) -> None:
    for recorder in list(_every_recorder):
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
