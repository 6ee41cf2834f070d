"""A bench for calling step bodies directly: a migrated database, a scripted cloud client.

The step functions are the bodies the Celery tasks run; here they run in the test's thread
against a real database (SQLite and, with ``TEST_DATABASE_URL``, PostgreSQL) with a stub
client whose answers, and whatever must happen *during* a call (a cancel, a second copy of the
step), the test scripts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from bms.jobs import Job
from models.db import session_scope
from models.records import (
    Batch,
    BatchSource,
    Event,
    ServerRequest,
    StrayServer,
    VolumeAttachment,
    record_creation,
)
from models.states import RequestState
from tasks.base import Chain
from worker.limiter import NoCapacity, Reservation
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings

S = RequestState


class StubClient:
    """Answers each cloud call from a script, in order (the last answer repeats).

    An answer is a value, an exception to raise, or a callable run with the call's arguments
    (for a side effect in the middle of the call) whose result is then taken as the answer.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.script: dict[str, list[Any]] = {}
        self.nova = _Nova(self)
        self.resources = _Resources(self)

    def on(self, name: str, *answers: Any) -> StubClient:
        self.script[name] = list(answers)
        return self

    def count(self, name: str) -> int:
        return sum(1 for called, _args in self.calls if called == name)

    def answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        queue = self.script.get(name)
        if not queue:
            raise AssertionError(f"unexpected cloud call {name}{args}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        while callable(answer) and not isinstance(answer, type | BaseException):
            answer = answer(*args)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def create_servers(self, body):
        return self.answer("create_servers", body)

    def list_servers(self, **filters):
        return self.answer("list_servers", filters)

    def show_job(self, job_id):
        return self.answer("show_job", job_id)

    def show_server(self, server_id):
        return self.answer("show_server", server_id)

    def rename_server(self, server_id, name):
        return self.answer("rename_server", server_id, name)

    def attach_volume(self, server_id, volume_id, device=None):
        return self.answer("attach_volume", server_id, volume_id, device)

    def detach_volume(self, server_id, volume_id):
        return self.answer("detach_volume", server_id, volume_id)

    def list_volume_attachments(self, server_id):
        return self.answer("list_volume_attachments", server_id)

    def delete_servers(self, server_ids):
        return self.answer("delete_servers", server_ids)


class _Nova:
    def __init__(self, client: StubClient) -> None:
        self._client = client

    def replace_tags(self, server_id, tags):
        return self._client.answer("replace_tags", server_id, tags)


class _Resources:
    def __init__(self, client: StubClient) -> None:
        self._client = client

    def show_volume(self, volume_id):
        return self._client.answer("show_volume", volume_id)


@dataclass
class StubLimiter:
    backed_off: list[tuple[str, float | None]] = field(default_factory=list)
    #: Slots held by capacity-first steps: (class, reservation handed over).
    holds: list[tuple[str, int | None]] = field(default_factory=list)
    #: When set, ``hold`` finds no capacity for this many seconds (a 60 s window).
    denied: float | None = None
    #: Pickups reported by runs holding a booked slot: (class, seconds after their ETA).
    pickups: list[tuple[str, float]] = field(default_factory=list)
    #: Slots ``reserve`` can book, as the seconds until each one's instant, earliest first.
    bookable: list[float] = field(default_factory=list)
    #: Entries booked by ``reserve``: (class, entry).
    booked: list[tuple[str, int]] = field(default_factory=list)
    #: The turn ``turn`` gives the next caller, in seconds from now; each turn moves it a pace.
    next_turn: float = 0.0
    pace_seconds: float = 1.0
    #: What ``lead`` answers.
    lead_seconds: float = 0.0
    #: Entries given back with ``release``.
    released: list[int] = field(default_factory=list)

    def release(self, api_class: str, entries: list[int]) -> None:
        self.released += entries

    def reserve(self, api_class: str, count: int, ahead: float = 0.0) -> Reservation:
        delays = [delay for delay in self.bookable[:count] if delay <= ahead]
        del self.bookable[: len(delays)]
        entries = [500 + len(self.booked) + index for index in range(len(delays))]
        self.booked += [(api_class, entry) for entry in entries]
        wait = self.bookable[0] if self.bookable else (self.denied or 0.0)
        return Reservation(api_class, entries, 0.0 if entries else wait, delays)

    def turn(self, api_class: str, earliest: float, behind_others: bool = False) -> float:
        if behind_others and self.next_turn <= 0:
            return 0.0  # nobody waits: no turn taken
        given = max(self.next_turn, earliest)
        self.next_turn = given + self.pace_seconds
        return given

    def lead(self, api_class: str) -> float:
        return self.lead_seconds

    def record_pickup(self, api_class: str, seconds: float) -> None:
        self.pickups.append((api_class, seconds))

    def back_off(self, api_class: str, seconds: float | None) -> None:
        self.backed_off.append((api_class, seconds))

    @contextmanager
    def hold(
        self, api_class: str, entry: int | None = None, pickup: float | None = None
    ) -> Iterator[None]:
        if pickup is not None:
            self.record_pickup(api_class, pickup)
        if self.denied is not None and (api_class, entry) not in self.booked:
            raise NoCapacity(api_class, self.denied, 60.0)
        self.holds.append((api_class, entry))
        yield


def job(status: str, *server_ids: str, code: str | None = None, job_id: str = "job-1") -> Job:
    """A job as the cloud answers it, one sub_job per server."""
    subs = [
        {"status": status, "entities": {"server_id": sid}, "error_code": code} for sid in server_ids
    ]
    return Job.from_api(
        {"status": status, "job_id": job_id, "error_code": code, "entities": {"sub_jobs": subs}}
    )


def volume(status: str, server_id: str | None = "srv-1") -> dict:
    attachments = [{"server_id": server_id}] if server_id and status != "available" else []
    return {"id": "vol-1", "status": status, "attachments": attachments}


@dataclass
class Bench:
    """The database and stub runtime one step test works with."""

    sessions: Any
    client: StubClient
    limiter: StubLimiter
    settings: Settings

    def add(self, state: RequestState = S.PENDING, volumes: int = 0, **fields: Any):
        """A committed request in ``state`` with ``fields`` set directly, as a fixture."""
        with session_scope(self.sessions) as session:
            batch = Batch(name="steps", source=BatchSource.CLI)
            session.add(batch)
            session.flush()
            body = {"name": "web", "metadata": {}, "flavorRef": "f"}
            request = ServerRequest(
                batch_id=batch.id,
                position=0,
                name="web",
                spec={"create_body": body, "tags": ["t1"]},
                state=state,
                **fields,
            )
            request.attachments = [
                VolumeAttachment(position=i, volume_id=f"vol-{i + 1}") for i in range(volumes)
            ]
            session.add(request)
            session.flush()
            record_creation(session, request)
            return request.id

    def chain(self, request_id: uuid.UUID) -> Chain:
        return Chain(str(request_id), self.get(request_id).fence)

    def get(self, request_id: uuid.UUID) -> ServerRequest:
        with session_scope(self.sessions) as session:
            return session.scalar(
                select(ServerRequest)
                .where(ServerRequest.id == request_id)
                .options(selectinload(ServerRequest.attachments))
            )

    def set(self, request_id: uuid.UUID, **fields: Any) -> None:
        with session_scope(self.sessions) as session:
            request = session.get(ServerRequest, request_id)
            for name, value in fields.items():
                setattr(request, name, value)

    def events(self, request_id: uuid.UUID) -> list[tuple[str | None, str, str | None]]:
        with session_scope(self.sessions) as session:
            rows = session.scalars(
                select(Event).where(Event.request_id == request_id).order_by(Event.id)
            )
            return [(e.from_state and e.from_state.value, e.to_state.value, e.detail) for e in rows]

    def strays(self, request_id: uuid.UUID) -> list[StrayServer]:
        with session_scope(self.sessions) as session:
            query = select(StrayServer).where(StrayServer.request_id == request_id)
            return list(session.scalars(query.order_by(StrayServer.id)))

    def during(self, action: Callable[[], None], answer: Any) -> Callable[..., Any]:
        """An answer that first does ``action`` (the interleaving), then answers ``answer``."""

        def run(*_args: Any) -> Any:
            action()
            return answer

        return run

    def cancel_during(self, request_id: uuid.UUID, answer: Any) -> Callable[..., Any]:
        """An answer given after an operator cancelled ``request_id`` during the call."""
        from tasks.control import cancel  # the control path, as the API calls it

        return self.during(lambda: cancel(self.sessions, [request_id]), answer)


@pytest.fixture
def bench(database) -> Iterator[Bench]:
    settings = Settings(
        database_url=database.url,
        max_attempts=3,
        create_lookup_grace_seconds=0,
        delay_scale=0.01,
    )
    bench = Bench(database.sessions, StubClient(), StubLimiter(), settings)
    use_runtime(Runtime(settings, database.sessions, bench.limiter, bench.client))
    yield bench
    use_runtime(None)


def next_task(outcome) -> str | None:
    """The name of the task a step's outcome sends, or None."""
    if outcome is None or outcome.signature is None:
        return None
    return outcome.signature.task
