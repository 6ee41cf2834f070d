"""Count what a worker process does, into Redis: SQL statements, commits, task runs by name.

Installed in the worker processes by :mod:`bench.worker_probe`; read by the benchmark. A
process counts locally and adds its counts to Redis after each task, so that the counting does
not add a Redis round trip to every statement (that would inflate the CPU figure it sits beside).
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

_lock = threading.Lock()
_pending: Counter[str] = Counter()
_client: tuple[int, redis.Redis] | None = None
_redis_url: str | None = None


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
    with _lock:
        _pending[f"task:{getattr(sender, 'name', sender)}"] += 1
    _flush()


def _flush(*_args, **_kwargs) -> None:
    with _lock:
        counts = dict(_pending)
        _pending.clear()
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
