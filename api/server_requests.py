"""Routes of ``/v1/requests``: read one server request, retry or cancel it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, status

from api import queries
from api.deps import Sessions
from api.schemas import InvalidRequest, Problem, RequestDetail, RequestRef
from models.db import session_scope
from tasks import control

router = APIRouter(prefix="/v1/requests", tags=["requests"])

NOT_FOUND = {404: {"model": Problem, "description": "No request has this id."}}
INVALID = {422: {"model": InvalidRequest, "description": "The id is not a UUID."}}


def _current(sessions: Sessions, request_id: uuid.UUID) -> RequestRef:
    with session_scope(sessions) as session:
        ref = queries.request_ref(session, request_id)
    if ref is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")
    return ref


@router.get(
    "/{request_id}",
    response_model=RequestDetail,
    summary="Read a request: spec, progress, errors, timeline",
    responses={**NOT_FOUND, **INVALID},
)
def read_request(request_id: uuid.UUID, sessions: Sessions) -> RequestDetail:
    """The stored spec, state, create attempts, cloud ids (server, job), the step that failed
    and the last error, the server's addresses, each volume attachment, and every event."""
    with session_scope(sessions) as session:
        detail = queries.request_detail(session, request_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")
    return detail


@router.post(
    "/{request_id}/retry",
    response_model=RequestRef,
    summary="Retry a FAILED request",
    responses={
        **NOT_FOUND,
        **INVALID,
        409: {"model": Problem, "description": "The request is not FAILED."},
    },
)
def retry_request(request_id: uuid.UUID, sessions: Sessions) -> RequestRef:
    """Resume the request at the step that failed, with a fresh attempt budget; answers with
    its new state. Only a FAILED request can be retried (409 otherwise)."""
    resumed = control.retry(sessions, [request_id])
    ref = _current(sessions, request_id)
    if not resumed:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"request {request_id} is {ref.state.value}: only FAILED requests can be retried",
        )
    return ref


@router.post(
    "/{request_id}/cancel",
    response_model=RequestRef,
    summary="Cancel an unfinished request",
    responses={
        **NOT_FOUND,
        **INVALID,
        409: {"model": Problem, "description": "The request is already finished."},
    },
)
def cancel_request(request_id: uuid.UUID, sessions: Sessions) -> RequestRef:
    """Cancel the request (its server, if one was created, is deleted); 409 when it is
    already ACTIVE, FAILED or CANCELLED."""
    cancelled = control.cancel(sessions, [request_id])
    ref = _current(sessions, request_id)
    if not cancelled:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"request {request_id} is {ref.state.value}: only unfinished requests can be cancelled",
        )
    return ref
