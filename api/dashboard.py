"""The dashboard's reads: every view aggregated in SQL and paged, so that a batch of 10,000
requests costs a handful of indexed queries and never loads its requests all at once.

Functions take an open session and return plain dataclasses for the templates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session

from api.queries import newest_batches, state_counts
from models.base import as_utc, utcnow
from models.records import Batch, CloudJob, Event, ServerRequest
from models.states import TERMINAL_STATES, RequestState

#: The order of the stacked bar's segments: finished first, then the pipeline backwards; a
#: teardown's states (every state has its segment, so the bar always adds up to the total).
BAR_ORDER = (
    RequestState.TORN_DOWN,
    RequestState.TEARING_DOWN,
    RequestState.ACTIVE,
    RequestState.FAILED,
    RequestState.CANCELLED,
    RequestState.TAGGING,
    RequestState.ATTACHING,
    RequestState.BUILDING,
    RequestState.CREATING,
    RequestState.PENDING,
)
#: Points of the progress-over-time chart, whatever the batch's size.
CHART_POINTS = 60
REQUESTS_PER_PAGE = 100
BATCHES_PER_PAGE = 25


@dataclass
class Progress:
    """A batch's counts and what follows from them."""

    total: int
    counts: dict[RequestState, int]
    created_at: datetime
    now: datetime = field(default_factory=utcnow)

    @property
    def settled(self) -> int:
        return sum(self.counts[s] for s in TERMINAL_STATES)

    @property
    def percent(self) -> int:
        """Requests in a final state, in whole percent (100 only when all are)."""
        if not self.total:
            return 100
        share = self.settled * 100 // self.total
        return 100 if self.settled == self.total else min(share, 99)

    @property
    def segments(self) -> list[tuple[RequestState, int, float]]:
        """``(state, count, width %)`` of the stacked bar, empty states left out."""
        if not self.total:
            return []
        return [
            (state, self.counts[state], self.counts[state] * 100 / self.total)
            for state in BAR_ORDER
            if self.counts[state]
        ]

    @property
    def time_left(self) -> str:
        """At the pace so far: elapsed / settled x unsettled."""
        left = self.total - self.settled
        if left == 0:
            return "done"
        if self.settled == 0:
            return "—"
        elapsed = (self.now - as_utc(self.created_at)).total_seconds()
        return _duration(elapsed / self.settled * left)


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


@dataclass
class BatchRow:
    id: uuid.UUID
    name: str
    source: str
    created_at: datetime
    progress: Progress


def batch_rows(session: Session, limit: int, offset: int) -> tuple[list[BatchRow], int]:
    """A page of batches, newest first, each with its counts (one grouped query)."""
    batches, counts, total = newest_batches(session, limit, offset)
    rows = [
        BatchRow(
            b.id,
            b.name,
            b.source.value,
            as_utc(b.created_at),
            Progress(sum(counts[b.id].values()), counts[b.id], b.created_at),
        )
        for b in batches
    ]
    return rows, total


@dataclass
class Failure:
    code: str | None
    message: str | None
    count: int


@dataclass
class BatchView:
    id: uuid.UUID
    name: str
    source: str
    created_at: datetime
    progress: Progress
    failures: list[Failure]
    chart: list[tuple[float, float]]  # (x, y) in 0..1: time since submission, share settled


def batch_view(session: Session, batch_id: uuid.UUID) -> BatchView | None:
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    counts = state_counts(session, [batch_id])[batch_id]
    progress = Progress(sum(counts.values()), counts, batch.created_at)
    return BatchView(
        batch.id,
        batch.name,
        batch.source.value,
        as_utc(batch.created_at),
        progress,
        failures(session, batch_id),
        chart(session, batch_id, progress),
    )


def failures(session: Session, batch_id: uuid.UUID, limit: int = 50) -> list[Failure]:
    """FAILED requests grouped by error code, most frequent first, with one message each."""
    rows = session.execute(
        select(
            ServerRequest.last_error_code,
            func.min(ServerRequest.last_error_message),
            func.count(),
        )
        .where(ServerRequest.batch_id == batch_id, ServerRequest.state == RequestState.FAILED)
        .group_by(ServerRequest.last_error_code)
        .order_by(func.count().desc(), ServerRequest.last_error_code)
        .limit(limit)
    )
    return [Failure(code, message, number) for code, message, number in rows]


def chart(session: Session, batch_id: uuid.UUID, progress: Progress) -> list[tuple[float, float]]:
    """Requests settled over time, counted in SQL per slice of time: ``CHART_POINTS`` slices
    from submission until now (or the last final transition), whatever the batch's size."""
    if not progress.total or not progress.settled:
        return []
    start = as_utc(progress.created_at)
    span = max((progress.now - start).total_seconds(), 1.0)
    width = span / CHART_POINTS
    bucket = _seconds_since(session, Event.at, start) / width
    slice_ = (
        func.floor(bucket) if session.bind.dialect.name != "sqlite" else func.cast(bucket, Integer)
    )
    rows = session.execute(
        select(slice_.label("slice"), func.count())
        .select_from(Event)
        .join(ServerRequest, ServerRequest.id == Event.request_id)
        .where(
            ServerRequest.batch_id == batch_id,
            Event.to_state.in_(TERMINAL_STATES),
            Event.from_state.is_not(None),
            Event.from_state != Event.to_state,
        )
        .group_by("slice")
        .order_by("slice")
    ).all()
    points, done = [(0.0, 0.0)], 0
    for index, number in rows:
        done += number
        x = min(max((int(index) + 1) / CHART_POINTS, 0.0), 1.0)
        # A step: flat until the slice's end, then up by what settled in it.
        points += [(x, points[-1][1]), (x, min(done / progress.total, 1.0))]
    if points[-1][0] < 1.0:
        points.append((1.0, points[-1][1]))
    return points


def _seconds_since(session: Session, column, start: datetime):
    """Seconds from ``start`` to ``column``, in SQL (SQLite keeps timestamps as text)."""
    if session.bind.dialect.name == "sqlite":
        naive = start.replace(tzinfo=None).isoformat(sep=" ")
        return (func.julianday(column) - func.julianday(naive)) * 86400.0
    return func.extract("epoch", column - start)


@dataclass
class RequestLine:
    id: uuid.UUID
    position: int
    name: str
    state: RequestState
    attempt: int
    server_id: str | None
    last_error_code: str | None
    updated_at: datetime


def request_lines(
    session: Session,
    batch_id: uuid.UUID,
    offset: int,
    state: RequestState | None = None,
    limit: int = REQUESTS_PER_PAGE,
) -> list[RequestLine]:
    """One page of the batch's requests in submission order (the spec is not loaded)."""
    query = select(
        ServerRequest.id,
        ServerRequest.position,
        ServerRequest.name,
        ServerRequest.state,
        ServerRequest.attempt,
        ServerRequest.server_id,
        ServerRequest.last_error_code,
        ServerRequest.updated_at,
    ).where(ServerRequest.batch_id == batch_id)
    if state is not None:
        query = query.where(ServerRequest.state == state)
    rows = session.execute(query.order_by(ServerRequest.position).limit(limit).offset(offset))
    return [RequestLine(*row) for row in rows]


def cloud_jobs(session: Session, request_id: uuid.UUID) -> list[CloudJob]:
    return list(
        session.scalars(
            select(CloudJob).where(CloudJob.request_id == request_id).order_by(CloudJob.created_at)
        )
    )


def age(moment: datetime | None) -> str:
    """``12s ago``, for the templates."""
    if moment is None:
        return ""
    return _duration((utcnow() - as_utc(moment)).total_seconds()) + " ago"


def until(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = (as_utc(moment) - utcnow()).total_seconds()
    return "due" if seconds <= 0 else "in " + _duration(seconds)
