"""Count what a worker process does, into Redis: SQL statements, commits, task runs by name.

Installed in the worker processes by :mod:`bench.worker_probe`; read by the benchmark. A
process counts locally and adds its counts to Redis at most every ``FLUSH_SECONDS`` (a timer
sends what the last tasks left), so that the counting adds no Redis round trip to every
statement or every task: both inflated the CPU figure it sits beside (a pipeline per task was
3% of a pool child's CPU).
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import redis
from celery.signals import task_postrun, worker_process_shutdown
from sqlalchemy import event
from sqlalchemy.engine import Engine

STATEMENTS = "statements"
COMMITS = "commits"
#: One Redis hash holds every count: field ``statements``, ``commits``, ``task:<name>``.
KEY = "bench:counters"
#: Longest a count waits in its process before it is added to Redis.
FLUSH_SECONDS = 0.5

_lock = threading.Lock()
_pending: Counter[str] = Counter()
_client: tuple[int, redis.Redis] | None = None
_redis_url: str | None = None
_timer: threading.Timer | None = None


def install(redis_url: str) -> None:
    """Count every statement of every engine of this process (and of its forked children)."""
    global _redis_url
    _redis_url = redis_url
    # Class-level: engines are made after this runs (lazily, in each pool child).
    event.listen(Engine, "before_cursor_execute", _on_statement)
    event.listen(Engine, "commit", _on_commit)
    task_postrun.connect(_on_task_done, weak=False)
    worker_process_shutdown.connect(_flush, weak=False)


def read(client: redis.Redis) -> Counter[str]:
    """Every count flushed so far by every counting process."""
    return Counter({k.decode(): int(v) for k, v in client.hgetall(KEY).items()})


def _on_statement(*_args, **_kwargs) -> None:
    with _lock:
        _pending[STATEMENTS] += 1


def _on_commit(*_args, **_kwargs) -> None:
    with _lock:
        _pending[COMMITS] += 1


def _on_task_done(sender=None, **_kwargs) -> None:
    global _timer
    with _lock:
        _pending[f"task:{getattr(sender, 'name', sender)}"] += 1
        if _timer is None:
            _timer = threading.Timer(FLUSH_SECONDS, _flush)
            _timer.daemon = True
            _timer.start()


def _flush(*_args, **_kwargs) -> None:
    global _timer
    with _lock:
        counts = dict(_pending)
        _pending.clear()
        _timer = None
    if counts:
        pipe = _redis().pipeline(transaction=False)
        for name, value in counts.items():
            pipe.hincrby(KEY, name, value)
        pipe.execute()


def _redis() -> redis.Redis:
    """One client per process: a client made before a fork must not be used after it."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(_redis_url))
    return _client[1]
