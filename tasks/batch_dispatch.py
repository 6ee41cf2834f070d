"""Dispatch of a stored batch: its chains sent in chunks by a control task, behind a watermark.

The intake stores a batch in one transaction and sends ``bms.start_batch`` (the preflight,
``tasks.preflight``), which hands on to ``bms.dispatch_batch``: nobody waits for the batch's
chains in an HTTP call. Each run of that task sends the chains of the next chunk
of requests (``BMS_DISPATCH_CHUNK``, in submission order) with :func:`tasks.control.dispatch`,
moves the batch's ``dispatched_position`` past them, and sends itself for the chunk after. So
the control queue stays shared with other batches and the reconciler between chunks.

The watermark is moved by compare-and-set: of two runs that dispatched the same chunk (a
redelivery, a resume racing a slow run), one moves it and goes on, the other stops. Sending a
chunk twice is harmless, each chain start bumps the request's fencing token. A dispatch that
died (a worker killed, the broker unreachable) leaves the watermark where it was; the batch
reconciler (``bms.reconcile_batches``, a beat task) resumes every batch whose watermark has not
reached its last request and has not moved for ``BMS_DISPATCH_STALL_SECONDS``: through
``bms.start_batch`` while the watermark is 0 (its preflight may not have run), else through
``bms.dispatch_batch``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from celery import shared_task
from kombu.exceptions import OperationalError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import session_scope
from models.records import Batch, ServerRequest
from models.states import IN_FLIGHT_STATES
from tasks.control import dispatch
from worker import fault_hooks
from worker.app import app
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.batch_dispatch")

#: Batches resumed per run of the batch reconciler (the rest wait for its next run).
RESUME_LIMIT = 100


def send(batch_id: uuid.UUID | str, position: int | None, task: str = "bms.dispatch_batch") -> bool:
    """Send ``bms.dispatch_batch`` for the batch; ``position``: the watermark it expects
    (``None``: whatever the watermark is). ``False`` when the broker cannot be reached: the
    batch reconciler sends it later."""
    kwargs = {"batch_id": str(batch_id)}
    if task == "bms.dispatch_batch":
        kwargs["position"] = position
    signature = app.signature(task, kwargs=kwargs, immutable=True)
    try:
        # ignore_result: a sender that does not know the task (the API) would otherwise
        # subscribe to a result that never comes.
        signature.apply_async(ignore_result=True)
    except OperationalError as exc:
        log.warning("broker unreachable (%s): batch %s is dispatched later", exc, batch_id)
        return False
    return True


def dispatch_chunk(
    sessions: sessionmaker[Session], batch_id: uuid.UUID, position: int | None, size: int
) -> int | None:
    """Send the chains of the batch's next ``size`` requests and move its watermark past them.

    A batch's dispatch starts here, with the chunk at watermark 0. ``position`` is the
    watermark the caller expects; another one means another run has moved on, and this one
    stops. Returns the new watermark when requests are left to dispatch, else ``None``.
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
        end = min(start + size, total)
        chunk = _chunk(session, batch_id, start, end)
    # Requests cancelled meanwhile have no chain to start; any other one must be sent.
    expected = sum(1 for _id, state in chunk if state in IN_FLIGHT_STATES)
    sent = dispatch(sessions, [request_id for request_id, _state in chunk])
    if sent < expected:
        log.warning(
            "batch %s: %d of %d chains of positions %d-%d sent; the batch reconciler resumes",
            batch_id, sent, expected, start, end - 1,
        )  # fmt: skip
        return None
    with session_scope(sessions) as session:
        moved = session.execute(
            update(Batch.__table__)
            .where(Batch.id == batch_id, Batch.dispatched_position == start)
            .values(dispatched_position=end)
        ).rowcount
    if not moved:
        return None  # another run dispatched this chunk too, and goes on from here
    return end if end < total else None


def close(sessions: sessionmaker[Session], batch_id: uuid.UUID) -> None:
    """Nothing of the batch is to be dispatched (refused by its preflight, or nothing left
    PENDING): move its watermark to the end, so that the batch reconciler leaves it alone."""
    with session_scope(sessions) as session:
        session.execute(
            update(Batch.__table__)
            .where(Batch.id == batch_id, Batch.dispatched_position < Batch.request_count)
            .values(dispatched_position=Batch.request_count)
        )


def _chunk(session: Session, batch_id: uuid.UUID, start: int, end: int) -> Sequence:
    return session.execute(
        select(ServerRequest.id, ServerRequest.state)
        .where(
            ServerRequest.batch_id == batch_id,
            ServerRequest.position >= start,
            ServerRequest.position < end,
        )
        .order_by(ServerRequest.position)
    ).all()


@shared_task(name="bms.dispatch_batch", ignore_result=True, acks_late=True)
def dispatch_batch(batch_id: str, position: int | None = None) -> int | None:
    """Dispatch the next chunk of a stored batch, then send itself for the chunk after it."""
    current = runtime()
    following = dispatch_chunk(
        current.sessions, uuid.UUID(batch_id), position, current.settings.dispatch_chunk
    )
    fault_hooks.after_dispatch_chunk()
    if following is not None:
        send(batch_id, following)
    return following


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
