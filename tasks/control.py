"""Starting chains: dispatch of committed requests, the reconciler, cancel and retry.

Every chain starts the same way: in one transaction the row's fencing token is bumped (so any
older chain of the request stops at its next step), then, after the commit, the step the row
names is sent. A request committed but never sent (a crash between the two) is found by the
reconciler, which does exactly this for every unfinished request that has stopped moving.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

from celery import shared_task
from kombu.exceptions import OperationalError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from models.base import utcnow
from models.db import session_scope
from models.records import AttachmentState, ServerRequest, transition
from models.states import IN_FLIGHT_STATES, RESUME_STATE, RequestState
from tasks.plan import next_signature
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


def dispatch(sessions: sessionmaker[Session], request_ids: Iterable[uuid.UUID]) -> int:
    """Start (or restart) the chain of each request; returns how many were sent.

    Call it after the requests are committed: the tasks read the rows. A broker that cannot
    be reached loses nothing: the requests stay committed and the reconciler starts them later.
    """
    sent = 0
    for request_id in request_ids:
        with session_scope(sessions) as session:
            request = _locked(session, request_id)
            if request is None:
                continue
            request.fence += 1
            signature = next_signature(request)
        if signature is None:
            continue
        try:
            signature.apply_async()
        except OperationalError as exc:
            log.warning("broker unreachable (%s): the reconciler will start the rest", exc)
            break
        sent += 1
    return sent


def stalled_request_ids(session: Session, idle_seconds: float) -> list[uuid.UUID]:
    """Unfinished requests, or ones with a server left to delete, idle for ``idle_seconds``."""
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    unfinished = or_(
        ServerRequest.state.in_(IN_FLIGHT_STATES),
        ServerRequest.cleanup_server_id.is_not(None),
        (ServerRequest.state == S.CANCELLED)
        & (ServerRequest.job_id.is_not(None) | ServerRequest.create_intent_at.is_not(None)),
    )
    query = select(ServerRequest.id).where(unfinished, ServerRequest.updated_at < cutoff)
    return list(session.scalars(query.order_by(ServerRequest.updated_at).limit(1000)))


@shared_task(name="bms.reconcile", ignore_result=True, acks_late=True)
def reconcile() -> int:
    """Beat task: rebuild the chain of every request that stopped moving."""
    current = runtime()
    with session_scope(current.sessions) as session:
        stalled = stalled_request_ids(session, current.settings.reconcile_after_seconds)
    if stalled:
        log.warning("reconciler: rebuilding %d stalled chain(s)", len(stalled))
    return dispatch(current.sessions, stalled)


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
            if request.server_id:
                request.cleanup_server_id = request.server_id
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
    if resume_state is S.BUILDING and not (request.job_id or request.server_id):
        return S.CREATING  # nothing in the cloud to look at: create again
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
