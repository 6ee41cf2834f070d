"""Routes of ``/v1/batches``: submit a batch, list and read batches, cancel, retry or tear
down one."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import queries
from api.deps import AppSettings, Sessions
from api.dryrun import DryRunReport, DryRunUnavailable, dry_run
from api.errors import InvalidFields
from api.schemas import (
    BatchCancelled,
    BatchDetail,
    BatchPage,
    BatchRetried,
    BatchTeardown,
    IdempotencyConflictProblem,
    InvalidRequest,
    Problem,
    SkippedRequest,
    SubmittedBatch,
)
from models.db import session_scope
from models.records import BatchSource
from models.spec import MAX_IDEMPOTENCY_KEY, SpecError, parse_batch
from models.states import RequestState
from tasks import control, teardown
from tasks.intake import IdempotencyConflict, Submitted, submit

router = APIRouter(prefix="/v1/batches", tags=["batches"])

#: Requests per page of ``GET /v1/batches/{id}``: by default, and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000

NOT_FOUND = {404: {"model": Problem, "description": "No batch has this id."}}
INVALID = {422: {"model": InvalidRequest, "description": "Each bad field, named by its path."}}
TOO_LARGE = {413: {"model": Problem, "description": "The body is over BMS_API_MAX_BODY_BYTES."}}
#: Paging stays within what every database takes as LIMIT/OFFSET.
MAX_OFFSET = 1_000_000_000

EXAMPLE_BATCH = {
    "name": "example-rack-a",
    "defaults": {
        "imageRef": "a3e5c3e0-0000-4000-8000-000000000001",
        "flavorRef": "physical.o2.medium",
        "vpcid": "c1d0e0f0-0000-4000-8000-0000000000a1",
        "availability_zone": "cn-north-4a",
        "nics": [{"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1"}],
        "key_name": "demo-key",
        "metadata": {"op_svc_userid": "8d5b8e3a2b1c4f0e9d7a6b5c4d3e2f10"},
    },
    "servers": [
        {
            "name": "db-primary",
            "attach_volumes": [{"volume_id": "e5e5e5e5-0000-4000-8000-000000000001"}],
        },
        {"name": "web", "count": 4, "tags": ["rack-a", "web"]},
    ],
}


def _dry_run(settings, spec) -> JSONResponse:
    try:
        return JSONResponse(dry_run(settings, spec))
    except DryRunUnavailable as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else {}
        return JSONResponse({"detail": exc.detail}, status_code=503, headers=headers)


def _json(answer: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """``answer`` serialized once: a returned model would be dumped, validated again against
    the response model and serialized (a third of a 10,000-request answer's time)."""
    return Response(answer.model_dump_json(), status_code, media_type="application/json")


def _not_found(batch_id: uuid.UUID) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"batch {batch_id} not found")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmittedBatch,
    summary="Submit a batch of servers to provision",
    responses={
        200: {
            "model": SubmittedBatch | DryRunReport,
            "description": "A replay of an Idempotency-Key; or, with `dry_run=true`, the "
            "preflight's report (nothing stored, nothing created).",
        },
        409: {
            "model": IdempotencyConflictProblem,
            "description": "The Idempotency-Key was used for a batch with another body.",
        },
        **INVALID,
        503: {"model": Problem, "description": "A dry run could not read the cloud."},
        **TOO_LARGE,
    },
)
def submit_batch(
    sessions: Sessions,
    settings: AppSettings,
    batch: Annotated[dict[str, Any], Body(examples=[EXAMPLE_BATCH])],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            description="A resubmission with the same key returns the first batch.",
        ),
    ] = None,
    dry_run_: Annotated[
        bool,
        Query(
            alias="dry_run",
            description="Only run the preflight against the cloud and say what would be done.",
        ),
    ] = False,
) -> Response:
    """The batch format of ``examples/batch.yaml``, as JSON: ``name``, optional ``defaults``
    merged into every server, and ``servers``. Answers **202** once the batch is stored, with
    one request per server (``count`` expanded), all PENDING, and ``total``, how many were
    stored. The workers send their chains right after, in chunks (``bms.dispatch_batch``).

    With an ``Idempotency-Key`` already used for the same batch, nothing is created: the answer
    is **200** with the first batch's id and requests (their states as they are now). The same
    key with another batch answers **409** with the SHA-256 digests of both canonical bodies
    (name and servers, defaults merged, keys sorted); nothing is stored.
    A batch that does not validate answers **422** naming every bad field; nothing is stored.
    So does one of more than ``BMS_MAX_BATCH_SERVERS`` servers (counts included), nested deeper
    than 32 levels, or holding control characters. A body over ``BMS_API_MAX_BODY_BYTES`` is
    refused with **413** before it is read.

    With ``dry_run=true`` nothing is stored and nothing is created: the answer is **200** with
    the preflight's report (``ok``, each problem with its field and servers, the account's
    limits against the batch, and the number of create calls, with and without grouping), or
    **503** when the cloud cannot be read now.
    """
    try:
        spec = parse_batch(batch, settings.max_batch_servers)
    except SpecError as exc:
        raise InvalidFields(exc.errors) from None
    if dry_run_:
        return _dry_run(settings, spec)
    try:
        submitted = submit(sessions, spec, BatchSource.API, idempotency_key)
    except IdempotencyConflict as exc:
        problem = IdempotencyConflictProblem(
            detail=str(exc),
            batch_id=exc.batch_id,
            stored_digest=exc.stored_digest,
            submitted_digest=exc.submitted_digest,
        )
        return JSONResponse(problem.model_dump(mode="json"), status.HTTP_409_CONFLICT)
    if not submitted.created:
        with session_scope(sessions) as session:
            return _json(queries.submitted_batch(session, submitted.batch_id))
    return Response(submitted_json(submitted), status.HTTP_202_ACCEPTED, media_type=JSON_TYPE)


JSON_TYPE = "application/json"


def submitted_json(submitted: Submitted) -> str:
    """The :class:`SubmittedBatch` of a batch just stored (every request PENDING), as the
    model would serialize it: built as plain data, since 10,000 ``RequestRef`` models cost a
    tenth of a 10,000-server submission."""
    pending = RequestState.PENDING.value
    answer = {
        "batch_id": str(submitted.batch_id),
        "requests": [
            {"id": str(request_id), "name": name, "state": pending}
            for request_id, name in zip(submitted.request_ids, submitted.names, strict=True)
        ],
        "total": submitted.total,
    }
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


@router.get("", response_model=BatchPage, summary="List batches, newest first", responses=INVALID)
def list_batches(
    sessions: Sessions,
    limit: Annotated[int, Query(ge=1, le=500, description="Batches per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Batches to skip.")] = 0,
) -> BatchPage:
    """A page of batches with their requests counted per state; ``total`` counts them all."""
    with session_scope(sessions) as session:
        return queries.batch_page(session, limit, offset)


@router.get(
    "/{batch_id}",
    response_model=BatchDetail,
    summary="Read a batch and its requests",
    responses={**NOT_FOUND, **INVALID},
)
def read_batch(
    batch_id: uuid.UUID,
    sessions: Sessions,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description="Requests per page, in submission order.")
    ] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(max_length=32, description="The `next_cursor` of the page before; none: the first."),
    ] = None,
) -> Response:
    """Name, source, creation time, requests counted per state (all of them), and one page of
    the requests with each one's state. ``next_cursor`` reads the next page; it is null on the
    last one."""
    after = None
    if cursor is not None:
        try:
            after = queries.decode_cursor(cursor)
        except ValueError:
            raise InvalidFields([("cursor", "not a next_cursor of this route")]) from None
    with session_scope(sessions) as session:
        detail = queries.batch_detail(session, batch_id, limit, after)
    if detail is None:
        raise _not_found(batch_id)
    return _json(detail)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchCancelled,
    summary="Cancel a batch's unfinished requests",
    responses={**NOT_FOUND, **INVALID},
)
def cancel_batch(batch_id: uuid.UUID, sessions: Sessions) -> BatchCancelled:
    """Requests not yet created never will be; a server already created (or being created) is
    deleted once its create finished. Finished requests are left as they are."""
    request_ids = _request_ids(sessions, batch_id)
    return BatchCancelled(batch_id=batch_id, cancelled=control.cancel(sessions, request_ids))


@router.post(
    "/{batch_id}/retry",
    response_model=BatchRetried,
    summary="Retry a batch's FAILED requests",
    responses={**NOT_FOUND, **INVALID},
)
def retry_batch(batch_id: uuid.UUID, sessions: Sessions) -> BatchRetried:
    """Each FAILED request resumes at the step that failed, with a fresh attempt budget."""
    request_ids = _request_ids(sessions, batch_id)
    return BatchRetried(batch_id=batch_id, retried=control.retry(sessions, request_ids))


@router.post(
    "/{batch_id}/teardown",
    response_model=BatchTeardown,
    summary="Delete a batch's servers, keeping their volumes",
    responses={**NOT_FOUND, **INVALID},
)
def teardown_batch(batch_id: uuid.UUID, sessions: Sessions) -> BatchTeardown:
    """Each request that has a server (ACTIVE, or left by a FAILED or CANCELLED one) goes
    TEARING_DOWN: its volumes are detached, its server is deleted and the delete job watched to
    its end, then it is TORN_DOWN; the volumes stay. Requests still being provisioned (cancel
    them first) or without a server are listed in ``skipped`` with the reason. Calling it again
    starts nothing twice."""
    request_ids = _request_ids(sessions, batch_id)
    started = teardown.start_teardown(sessions, request_ids)
    skipped = [SkippedRequest(id=i, reason=reason) for i, reason in started.skipped]
    return BatchTeardown(batch_id=batch_id, tearing_down=started.started, skipped=skipped)


def _request_ids(sessions: Sessions, batch_id: uuid.UUID) -> list[uuid.UUID]:
    with session_scope(sessions) as session:
        request_ids = queries.batch_request_ids(session, batch_id)
    if request_ids is None:
        raise _not_found(batch_id)
    return request_ids
