"""Starting chains: dispatch of committed requests, the reconciler, cancel and retry.

Every chain starts the same way: in one transaction the row's ownership token is advanced (so
any older message of the request stops at its next claim), then, after the commit, the step the
row names is sent. A request committed but never sent (a crash between the two) is found by the
reconciler, which does exactly this for every unfinished request that has stopped moving.

The reconciler counts its restarts of a request; one that still makes no progress after
``BMS_MAX_RESTARTS`` of them is ended (FAILED with the reason, or its cleanup given up with the
server named for an operator), so that every request ends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import shared_task
from sqlalchemy import Select, select, true, union_all, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from models.base import utcnow
from models.db import session_scope
from models.records import AttachmentState, Batch, ServerRequest, started_clause, transition
from models.states import IN_FLIGHT_STATES, RESUME_STATE, RequestState, Step
from tasks.base import give_up, send_each
from tasks.group_create import reconcile_groups
from tasks.plan import STEP_OF_TASK, next_signature, next_task_name
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.control")
S = RequestState


def _locked(session: Session, request_id: uuid.UUID) -> ServerRequest | None:
    return session.scalar(
        select(ServerRequest)
        .where(ServerRequest.id == request_id)
        .options(selectinload(ServerRequest.attachments))
        .with_for_update()
    )


def dispatch(
    sessions: sessionmaker[Session],
    request_ids: Iterable[uuid.UUID],
    *,
    idle_before: datetime | None = None,
    max_restarts: int | None = None,
) -> int:
    """Start (or restart) the chain of each request; returns how many were sent.

    Call it after the requests are committed: the tasks read the rows. A broker that cannot
    be reached loses nothing: the requests stay committed and the reconciler starts them later.

    :param idle_before: the reconciler's cutoff: a request that moved since it was found idle
        (checked under the row lock) is left to the chain that moved it.
    :param max_restarts: count this as a restart, and end a request restarted more often.
    """

    def restarted(request_id: uuid.UUID):
        with session_scope(sessions) as session:
            return _restart(session, request_id, idle_before, max_restarts)

    return send_each(request_ids, restarted)


def _restart(session: Session, request_id: uuid.UUID, idle_before, max_restarts):
    """Take the request over (token advanced in SQL, atomically) and name its next step."""
    bump = update(ServerRequest).where(ServerRequest.id == request_id)
    if idle_before is not None:
        bump = bump.where(ServerRequest.updated_at < idle_before)
    taken = session.execute(bump.values(fence=ServerRequest.fence + 1))
    if taken.rowcount != 1:
        return None  # gone, or it moved since it was found idle
    request = _locked(session, request_id)
    if max_restarts is not None:
        request.restarts += 1
        if request.restarts > max_restarts:
            _end_stalled(session, request)
            return None
    return next_signature(request)


def _end_stalled(session: Session, request: ServerRequest) -> None:
    task_name = next_task_name(request)
    if task_name is None:
        return
    step = STEP_OF_TASK.get(task_name, Step.CREATE)
    message = f"no progress at {task_name} after {request.restarts - 1} restarts"
    log.error("reconciler: request %s: %s, ending it", request.id, message)
    give_up(session, request, step, "ORCH.STALLED", message)


#: Stalled requests the reconciler takes on per run (the rest wait for its next run).
STALLED_LIMIT = 1000


def stalled_request_ids(session: Session, idle_seconds: float) -> list[uuid.UUID]:
    """Unfinished requests, or ones with a server left to delete, idle for ``idle_seconds``,
    oldest update first.

    A request its batch's feeder has not reached yet (PENDING, at or past the dispatch
    watermark) is waiting for quota, not stalled: the batch reconciler watches its feeder.
    Such requests can be most of the unfinished ones, and the watermark is on the batch, not
    the row: so the query never walks them. One statement of two parts, merged by update:
    the started requests from their partial index in its order (up to the limit), and the
    PENDING ones below their batch's watermark, looked up batch by batch (usually none).
    """
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    # started_clause() is also the predicate of the partial index this part walks.
    started = (
        select(ServerRequest.id, ServerRequest.updated_at)
        .where(started_clause(), ServerRequest.updated_at < cutoff)
        .order_by(ServerRequest.updated_at)
        .limit(STALLED_LIMIT)
    )
    sent = _sent_pending(session, cutoff)
    both = union_all(started.subquery().select(), sent).subquery()
    query = select(both.c.id).order_by(both.c.updated_at).limit(STALLED_LIMIT)
    return list(session.scalars(query))


def _sent_pending(session: Session, cutoff: datetime) -> Select:
    """PENDING requests below their batch's watermark (chains sent, never started), idle
    since before ``cutoff``: (id, updated_at), unordered.

    On PostgreSQL a LATERAL subquery per batch (its first ``STALLED_LIMIT`` by position), so
    that each batch's range below its watermark is looked up in the PENDING index: the
    planner cannot tell how many requests ``position < dispatched_position`` keeps, and as a
    plain join it walked every PENDING request (most of them waiting past the watermark) when
    one batch held them. SQLite joins in nested loops anyway. ``position >= 0``, so
    ``dispatched_position > 0`` is implied; said, it skips the batches not started yet.
    """
    R = ServerRequest
    below_watermark = (
        R.batch_id == Batch.id,
        R.state == S.PENDING,
        R.position < Batch.dispatched_position,
        R.updated_at < cutoff,
    )
    started_batches = Batch.dispatched_position > 0
    if session.get_bind().dialect.name != "postgresql":
        return select(R.id, R.updated_at).where(*below_watermark, started_batches)
    # In the index's order, and limited: a subquery with a LIMIT is not flattened into a join.
    per_batch = (
        select(R.id, R.updated_at)
        .where(*below_watermark)
        .order_by(R.position)
        .limit(STALLED_LIMIT)
        .correlate(Batch)
        .lateral()
    )
    return (
        select(per_batch.c.id, per_batch.c.updated_at)
        .select_from(Batch)
        .join(per_batch, true())
        .where(started_batches)
    )


@shared_task(name="bms.reconcile", ignore_result=True, acks_late=True)
def reconcile() -> int:
    """Beat task: rebuild the chain of every request that stopped moving, and watch again
    every count group no chain watches (``tasks.group_create.reconcile_groups``)."""
    current = runtime()
    idle_seconds = current.settings.reconcile_after_seconds
    with session_scope(current.sessions) as session:
        stalled = stalled_request_ids(session, idle_seconds)
    if stalled:
        log.warning("reconciler: rebuilding %d stalled chain(s)", len(stalled))
    groups = reconcile_groups(current.sessions, idle_seconds)
    return groups + dispatch(
        current.sessions,
        stalled,
        idle_before=utcnow() - timedelta(seconds=idle_seconds),
        max_restarts=current.settings.max_restarts,
    )


def cancel(sessions: sessionmaker[Session], request_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Cancel requests that are not finished; returns those cancelled.

    The rule: a request not yet created never will be. One whose server exists (or whose create
    was sent) is let finish its create, then its server is deleted: the running chain notices
    the state at its next step; the reconciler covers a chain that was lost.
    """
    cancelled = []
    for request_id in request_ids:
        with session_scope(sessions) as session:
            request = _locked(session, request_id)
            if request is None or request.state not in IN_FLIGHT_STATES:
                continue
            # A cancelled teardown keeps its server: the cancel stops the teardown, no more.
            if request.server_id and request.state is not S.TEARING_DOWN:
                request.cleanup_server_id, request.cleanup_attempts = request.server_id, 0
            transition(session, request, S.CANCELLED, detail="cancelled by operator")
            cancelled.append(request.id)
    return cancelled


def retry(sessions: sessionmaker[Session], request_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Resume FAILED requests at the step that failed, with a fresh attempt budget."""
    resumed = []
    for request_id in request_ids:
        with session_scope(sessions) as session:
            request = _locked(session, request_id)
            if request is None or request.state is not S.FAILED or request.failed_step is None:
                continue
            resume_state = _resume_state(request)
            _reset_for_retry(request, resume_state)
            transition(
                session, request, resume_state, detail=f"retry from {request.failed_step.value}"
            )
            request.failed_step = None
            resumed.append(request.id)
    dispatch(sessions, resumed)
    return resumed


def _resume_state(request: ServerRequest) -> RequestState:
    resume_state = RESUME_STATE[request.failed_step]
    made = request.job_id or request.server_id
    if resume_state is S.BUILDING and not made:
        return S.CREATING  # nothing in the cloud to look at: create again
    if resume_state is S.CREATING and made:
        # A create answered after the request FAILED was recorded: watch what it made.
        return S.BUILDING
    return resume_state


def _reset_for_retry(request: ServerRequest, resume_state: RequestState) -> None:
    request.last_error_code = request.last_error_message = None
    if resume_state is S.CREATING:
        request.attempt = 0
        request.job_id = request.server_id = None
        if request.create_intent_at is None:
            # With an intent kept, the marker is what finds a create whose answer was lost.
            request.create_marker = None
    for attachment in request.attachments:
        if attachment.state is AttachmentState.FAILED:
            attachment.state, attachment.attempt = AttachmentState.PENDING, 0
        elif attachment.state is AttachmentState.ATTACHING:
            attachment.attempt = 0  # left in flight (its answers lost): a fresh budget too
