"""Dispatch of a stored batch: its chains fed to the create quota by a control task, behind a
watermark.

The intake stores a batch in one transaction and sends ``bms.start_batch`` (the preflight,
``tasks.preflight``), which hands on to ``bms.dispatch_batch``: nobody waits for the batch's
chains in an HTTP call. Each run of that task sends the chains of the next chunk
of requests (``BMS_DISPATCH_CHUNK``, in submission order) with :func:`tasks.control.dispatch`,
moves the batch's ``dispatched_position`` past them, and sends itself for the chunk after. So
the control queue stays shared with other batches and the reconciler between chunks.

The feeder. Waiting for quota must cost nothing, so a request waiting for its create is a
PENDING row past the watermark, not a message: each run sends only as many creates as the
create class admits now. It reads the class's capacity (one Redis call, no SQL: a run that
finds none re-sends itself for the instant the next slot frees), then *reserves* the slots
(:meth:`~worker.limiter.GlobalLimiter.reserve`) and hands one to each create it sends (the
message's ``slot``), so the create never competes for quota with other callers; a slot not
used (a request cancelled meanwhile) is given back. It also books the slots that free within
``BMS_FEED_AHEAD_SECONDS`` and sends their creates with a countdown to the slot's instant: a
slot does not idle while the feeder's next run waits in the control queue for a worker, and the
next run need not come for each slot that frees (it comes a quarter of that time later at the
soonest, and books the slots freed meanwhile).
Several batches feed side by side: the reservation is atomic, so each slot goes to exactly one
of them.

The watermark is moved by compare-and-set *before* the chains are sent: of two runs that expect
the same watermark (a redelivery, a resume racing a waiting run), one moves it and sends the
chunk, the other gives its slots back and stops, sending nothing; a run that expects a watermark
that has moved on stops too, so two feeders of one batch collapse into one at the next move. A
broker found unreachable moves the watermark back to the first chain not sent. A feeder that
died (a worker killed) is resumed by the batch reconciler (``bms.reconcile_batches``, a beat
task), which resumes every batch whose watermark has not reached its last request and has not
moved for ``BMS_DISPATCH_STALL_SECONDS``: through ``bms.start_batch`` while the watermark is 0
(its preflight may not have run), else through ``bms.dispatch_batch``. Chains of a chunk that
died half-sent are below the watermark, where the request reconciler restarts them (it leaves
the PENDING requests past the watermark alone: they are waiting, not stalled).

A count group (``tasks.group_create``: one ``count`` create makes up to 100 of a batch's
servers) is one create call: the feeder sends its first waiting member, with one slot, and that
create hands the other members on; :func:`create_calls` is the one place that says what each
request costs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import shared_task
from celery.canvas import Signature
from kombu.exceptions import OperationalError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import session_scope
from models.records import Batch, ServerRequest
from models.states import RequestState
from tasks.plan import next_signature
from worker import fault_hooks
from worker.app import MAX_COUNTDOWN_SECONDS, app
from worker.limiter import GlobalLimiter
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.batch_dispatch")
#: The tasks whose message takes a create slot (a request's own create, a count group's).
CREATE_TASKS = ("bms.create_server", "bms.create_group")

#: Batches resumed per run of the batch reconciler (the rest wait for its next run).
RESUME_LIMIT = 100
#: The API class the feeder admits requests by.
CREATE_CLASS = "create"
#: A feeder run that booked all it could comes back after at least this share of
#: ``BMS_FEED_AHEAD_SECONDS`` (see :func:`_paced`).
PACE_SHARE_OF_AHEAD = 0.25


@dataclass(frozen=True)
class Feed:
    """What a feeder run leaves to the next one: the watermark it expects, and in how many
    seconds it should run (0: now, slots are left; else when the next slot frees)."""

    position: int
    countdown: float = 0.0


def send(
    batch_id: uuid.UUID | str,
    position: int | None,
    task: str = "bms.dispatch_batch",
    countdown: float = 0.0,
) -> bool:
    """Send ``bms.dispatch_batch`` for the batch; ``position``: the watermark it expects
    (``None``: whatever the watermark is). ``False`` when the broker cannot be reached: the
    batch reconciler sends it later."""
    kwargs = {"batch_id": str(batch_id)}
    if task == "bms.dispatch_batch":
        kwargs["position"] = position
    signature = app.signature(task, kwargs=kwargs, immutable=True)
    options = {"countdown": min(countdown, MAX_COUNTDOWN_SECONDS)} if countdown > 0 else {}
    try:
        # ignore_result: a sender that does not know the task (the API) would otherwise
        # subscribe to a result that never comes.
        signature.apply_async(ignore_result=True, **options)
    except OperationalError as exc:
        log.warning("broker unreachable (%s): batch %s is dispatched later", exc, batch_id)
        return False
    return True


def feed(
    sessions: sessionmaker[Session],
    limiter: GlobalLimiter | None,
    batch_id: uuid.UUID,
    position: int | None,
    size: int,
    ahead: float = 0.0,
) -> Feed | None:
    """One feeder run: the next chunk if the create class has room now or within ``ahead``
    seconds, else nothing but the time to come back. ``None``: nothing left to feed, or
    another run owns the batch."""
    if limiter is None:  # no quota to wait for (tests): whole chunks
        return dispatch_chunk(sessions, batch_id, position, size)
    if position is None:  # a resume: expect the watermark as it is now
        position = _watermark(sessions, batch_id)
        if position is None:
            return None
    room = limiter.capacity(CREATE_CLASS)
    if not room.free and room.wait_seconds > ahead:
        # One Redis call, not a single SQL statement; back when a slot can be booked.
        return Feed(position, _paced(room.wait_seconds - ahead, ahead))
    most = min(size, room.limit)  # booked ahead: at most a window's worth
    fed = dispatch_chunk(sessions, batch_id, position, most, limiter, rows=size, ahead=ahead)
    return Feed(fed.position, _paced(fed.countdown, ahead)) if fed is not None else None


def _paced(countdown: float, ahead: float) -> float:
    """When the next run comes, once this one booked all it could: not before a quarter of
    ``ahead`` has passed. Slots free one by one as their calls are answered, and a run for each
    cost a task run, a chunk's statements and a publish per two or three creates (issue 11);
    a slot that frees meanwhile is still booked before its instant, within ``ahead``. A run
    that left bookable slots (no countdown) comes back at once."""
    return max(countdown, ahead * PACE_SHARE_OF_AHEAD) if countdown > 0 else countdown


def dispatch_chunk(
    sessions: sessionmaker[Session],
    batch_id: uuid.UUID,
    position: int | None,
    size: int,
    limiter: GlobalLimiter | None = None,
    rows: int | None = None,
    ahead: float = 0.0,
) -> Feed | None:
    """Send the chains of the batch's next requests, at most ``size`` create calls (with a
    ``limiter``: as many as it grants now or within ``ahead`` seconds, each create carrying its
    slot and sent with a countdown to the slot's instant), looking at most ``rows`` requests
    ahead, and move the watermark past them, before sending.

    ``position`` is the watermark the caller expects; another one means another run has moved
    on, and this one stops. Returns what the next run expects when requests are left.
    """
    with session_scope(sessions) as session:
        row = session.execute(
            select(Batch.dispatched_position, Batch.request_count).where(Batch.id == batch_id)
        ).one_or_none()
        if row is None:
            return None
        start, total = row
        if (position is not None and start != position) or start >= total:
            return None
        chunk = _rows_for(session, batch_id, start, min(start + (rows or size), total), size)
    chunk = _within(chunk, size)
    slots, wait = _reserve(limiter, chunk, ahead)
    chunk = _within(chunk, len(slots)) if limiter is not None else chunk
    end = chunk[-1].position + 1 if chunk else start
    if end == start:
        return Feed(start, wait)  # the slots went to another caller: back when one frees
    if not _move(sessions, batch_id, start, end):
        _release(limiter, slots)
        return None  # another run sends this chunk
    sent_to = _send_chunk(sessions, chunk, slots, limiter)
    if sent_to < end:
        _move(sessions, batch_id, end, sent_to)  # the rest is the batch reconciler's
        log.warning("batch %s: broker unreachable at position %d; the batch reconciler "
                    "resumes", batch_id, sent_to)  # fmt: skip
        return None
    return Feed(end, wait) if end < total else None


def create_calls(chunk: Sequence) -> list[int]:
    """The create calls each request of ``chunk`` starts, in order: the slots its message
    needs. 1 for a PENDING request created on its own, and for the first PENDING member of a
    count group (``tasks.group_create``: its create makes the whole group, and hands each other
    member on, so those get no message of their own); 0 for every other request, which the
    feeder sends nothing for (cancelled, or already moved on by its group)."""
    calls, groups = [], set()
    for row in chunk:
        first = row.group_id is None or row.group_id not in groups
        calls.append(1 if row.state is RequestState.PENDING and first else 0)
        if row.state is RequestState.PENDING and row.group_id is not None:
            groups.add(row.group_id)
    return calls


def _within(chunk: Sequence, calls: int) -> list:
    """The longest prefix of ``chunk`` whose creates fit in ``calls``."""
    kept, spent = [], 0
    for row, cost in zip(chunk, create_calls(chunk), strict=True):
        spent += cost
        if spent > calls:
            break
        kept.append(row)
    return kept


def _reserve(
    limiter: GlobalLimiter | None, chunk: Sequence, ahead: float
) -> tuple[list[tuple[int, float]], float]:
    """The slots booked for the chunk's creates, as ``(entry, when to send its create, epoch
    seconds)``, and when the next run should come (when the slot after them can be booked)."""
    wanted = sum(create_calls(chunk))
    if limiter is None or not wanted:
        return [], 0.0
    booked = limiter.reserve(CREATE_CLASS, wanted, ahead)
    # Instants, not countdowns: the chunk's transaction runs before the sends, and a countdown
    # counted from the send would leave each slot idle that long. Each is moved a lead earlier:
    # a message sent for an instant starts some time after it (a worker's timer, a free pool
    # child), and the create then claims its row; it starts early instead, and its call waits
    # for the slot's instant (the limiter holds it back), so that no slot idles for the pickup.
    booked_at = time.time() - (limiter.lead(CREATE_CLASS) if any(booked.delays) else 0.0)
    instants = [booked_at + delay for delay in booked.delays]
    return list(zip(booked.entries, instants, strict=True)), max(booked.wait_seconds - ahead, 0.0)


def _release(limiter: GlobalLimiter | None, slots: list[tuple[int, float]]) -> None:
    if limiter is not None and slots:
        limiter.release(CREATE_CLASS, [entry for entry, _delay in slots])


def _move(sessions: sessionmaker[Session], batch_id: uuid.UUID, start: int, end: int) -> bool:
    """Compare-and-set of the watermark: ``start`` -> ``end``; whether this run moved it."""
    with session_scope(sessions) as session:
        return bool(
            session.execute(
                update(Batch.__table__)
                .where(Batch.id == batch_id, Batch.dispatched_position == start)
                .values(dispatched_position=end)
            ).rowcount
        )


def _send_chunk(
    sessions: sessionmaker[Session], chunk: Sequence, slots: list[tuple[int, float]], limiter
) -> int:
    """Start the chain of each request that makes a create call, with its slot; returns the
    position up to which all were sent (the chunk's end, or the first one the broker did not
    take). The tokens of the whole chunk are advanced in one transaction."""
    slots = list(slots)
    starts = [row for row, cost in zip(chunk, create_calls(chunk), strict=True) if cost]
    signatures = _take_over_all(sessions, [row.id for row in starts])
    for row in starts:
        slot = slots.pop(0) if slots else None
        signature = signatures.get(row.id)
        options = {}
        if signature is not None and slot is not None and signature.task in CREATE_TASKS:
            (signature.kwargs["slot"], instant), slot = slot, None
            options = {"eta": datetime.fromtimestamp(instant, UTC)} if instant > time.time() else {}
        _release(limiter, [slot] if slot is not None else [])  # cancelled since it was read
        if signature is None:
            continue
        try:
            signature.apply_async(**options)
        except OperationalError as exc:
            log.warning("broker unreachable (%s)", exc)
            _release(limiter, slots)
            return row.position
    return chunk[-1].position + 1 if chunk else 0


def _take_over_all(
    sessions: sessionmaker[Session], request_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Signature]:
    """Advance the tokens of the requests still PENDING (one UPDATE) and name each one's first
    step; a request cancelled since the chunk was read gets none."""
    if not request_ids:
        return {}
    with session_scope(sessions) as session:
        session.execute(
            update(ServerRequest)
            .where(ServerRequest.id.in_(request_ids), ServerRequest.state == RequestState.PENDING)
            .values(fence=ServerRequest.fence + 1)
            .execution_options(synchronize_session=False)
        )
        requests = session.scalars(
            select(ServerRequest).where(
                ServerRequest.id.in_(request_ids), ServerRequest.state == RequestState.PENDING
            )
        )
        return {request.id: next_signature(request) for request in requests}


def _watermark(sessions: sessionmaker[Session], batch_id: uuid.UUID) -> int | None:
    with session_scope(sessions) as session:
        return session.scalar(select(Batch.dispatched_position).where(Batch.id == batch_id))


def close(sessions: sessionmaker[Session], batch_id: uuid.UUID) -> None:
    """Nothing of the batch is to be dispatched (refused by its preflight, or nothing left
    PENDING): move its watermark to the end, so that the batch reconciler leaves it alone."""
    with session_scope(sessions) as session:
        session.execute(
            update(Batch.__table__)
            .where(Batch.id == batch_id, Batch.dispatched_position < Batch.request_count)
            .values(dispatched_position=Batch.request_count)
        )


def _rows_for(session: Session, batch_id: uuid.UUID, start: int, stop: int, calls: int) -> list:
    """The batch's rows from ``start``, read until they hold more than ``calls`` create calls
    (the rows :func:`_within` keeps for ``calls``, and the one after) or ``stop``. Read in
    pages that double from ``calls + 1``: nearly every row is a call of its own, so one page
    is the rule, where reading up to ``stop`` at once fetched the whole chunk for a window's
    worth of calls (500 rows for 20 at a time, a fifth of a pool child's CPU, issue 11).
    Count groups and cancelled rows cost nothing and take the pages after."""
    rows: list = []
    page_start, page = start, calls + 1
    while page_start < stop:
        page_end = min(page_start + page, stop)
        rows.extend(_chunk(session, batch_id, page_start, page_end))
        if sum(create_calls(rows)) > calls:
            break
        page_start, page = page_end, page * 2
    return rows


def _chunk(session: Session, batch_id: uuid.UUID, start: int, end: int) -> Sequence:
    return session.execute(
        select(
            ServerRequest.id, ServerRequest.state, ServerRequest.position, ServerRequest.group_id
        )
        .where(
            ServerRequest.batch_id == batch_id,
            ServerRequest.position >= start,
            ServerRequest.position < end,
        )
        .order_by(ServerRequest.position)
    ).all()


@shared_task(name="bms.dispatch_batch", ignore_result=True, acks_late=True)
def dispatch_batch(batch_id: str, position: int | None = None) -> int | None:
    """Feed the next chunk of a stored batch to the create quota, then send itself for the
    chunk after it (at once, or when the next slot frees)."""
    current = runtime()
    following = feed(
        current.sessions,
        current.limiter,
        uuid.UUID(batch_id),
        position,
        current.settings.dispatch_chunk,
        current.settings.feed_ahead_seconds,
    )
    fault_hooks.after_dispatch_chunk()
    if following is None:
        return None
    send(batch_id, following.position, countdown=following.countdown)
    return following.position


def stalled_batches(session: Session, idle_seconds: float) -> list[tuple[uuid.UUID, int]]:
    """``(id, watermark)`` of the batches not dispatched to their last request whose watermark
    has not moved for ``idle_seconds``, the longest idle first."""
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    query = (
        select(Batch.id, Batch.dispatched_position)
        .where(Batch.dispatched_position < Batch.request_count, Batch.updated_at < cutoff)
        .order_by(Batch.updated_at)
        .limit(RESUME_LIMIT)
    )
    return [(row.id, row.dispatched_position) for row in session.execute(query)]


def stalled_batch_ids(session: Session, idle_seconds: float) -> list[uuid.UUID]:
    return [batch_id for batch_id, _watermark in stalled_batches(session, idle_seconds)]


@shared_task(name="bms.reconcile_batches", ignore_result=True, acks_late=True)
def reconcile_batches() -> int:
    """Beat task: resume the dispatch of every batch whose dispatch stopped half-way."""
    current = runtime()
    with session_scope(current.sessions) as session:
        stalled = stalled_batches(session, current.settings.dispatch_stall_seconds)
        if stalled:
            # A lease: the next run leaves these alone for another stall period, so that a
            # resume waiting in a busy control queue is not sent again and again.
            ids = [batch_id for batch_id, _watermark in stalled]
            session.execute(
                update(Batch.__table__).where(Batch.id.in_(ids)).values(updated_at=utcnow())
            )
    if stalled:
        log.warning("batch reconciler: resuming the dispatch of %d batch(es)", len(stalled))
    # Not started at all: through bms.start_batch, whose preflight may not have run.
    return sum(
        send(batch_id, None, "bms.dispatch_batch" if watermark else "bms.start_batch")
        for batch_id, watermark in stalled
    )
