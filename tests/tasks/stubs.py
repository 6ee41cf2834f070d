"""Step bodies called directly, with a stub cloud client: the unit tests' harness.

``step_task`` returns the plain step function; ``body(step)`` calls it the way the task's
message does (``request_id=..., fence=...``). It runs the step's transactions on a migrated
database and its cloud calls on the stub, and hands back the ``Next`` it would send (nothing is
sent). ``tests/tasks/stepkit.py`` is the fuller bench (scripted answers, interleavings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from models.db import session_scope
from tasks.base import Chain
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings


class StubLimiter:
    """Always capacity; records back-offs."""

    def __init__(self) -> None:
        self.back_offs: list[tuple[str, float | None]] = []

    def acquire(self, api_class: str) -> Callable[[], None]:
        return lambda: None

    def back_off(self, api_class: str, seconds: float | None) -> None:
        self.back_offs.append((api_class, seconds))


@dataclass
class StubClient:
    """Answers each cloud call from ``answers[method]``: a value, an exception to raise, or a
    callable of the call's arguments; a list is consumed one entry per call. Every call is
    recorded in ``calls`` as ``(method, args)``."""

    answers: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, tuple]] = field(default_factory=list)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args))
            if method not in self.answers:
                raise AssertionError(f"unexpected cloud call {method}{args}")
            answer = self.answers[method]
            if isinstance(answer, list):
                answer = answer.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args) if callable(answer) else answer

        return call

    def called(self, method: str) -> list[tuple]:
        return [args for name, args in self.calls if name == method]


def body(step) -> Callable[..., Any]:
    """Call ``step`` with a message's arguments."""

    def call(*, request_id: str, fence: int) -> Any:
        return step(Chain(request_id, fence))

    return call


@pytest.fixture
def stub_cloud(database) -> Iterator[StubClient]:
    """Every step of this process uses ``database`` and a fresh stub client."""
    client = StubClient()
    settings = Settings(database_url=database.url, redis_url="redis://127.0.0.1:1/0")
    use_runtime(Runtime(settings, database.sessions, StubLimiter(), client))
    yield client
    use_runtime(None)


def read(sessions, model, key, *options) -> Any:
    """One row, loaded with ``options``, outside any step's transaction."""
    with session_scope(sessions) as session:
        return session.get(model, key, options=list(options))
