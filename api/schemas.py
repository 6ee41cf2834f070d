"""The API's response bodies (pydantic), as they appear in the OpenAPI page.

Request bodies are not here: a batch is validated by ``models.spec.parse_batch``, so that its
error paths are the spec's own (``servers[3].nics[0].subnet_id``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from models.base import as_utc
from models.records import AttachmentState, BatchSource
from models.states import RequestState, Step

#: SQLite hands timestamps back naive; every one we store is UTC, so say so on the wire.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class FieldError(BaseModel):
    """One bad field: its path in the request and what is wrong with it."""

    field: str = Field(examples=["servers[3].nics[0].subnet_id"])
    message: str


class InvalidRequest(BaseModel):
    """422: every bad field of the request is named; nothing was stored."""

    detail: list[FieldError]


class Problem(BaseModel):
    """401, 404, 409: what went wrong, in words."""

    detail: str


class RequestRef(BaseModel):
    """A server request, by id and name, with its state now."""

    id: uuid.UUID
    name: str
    state: RequestState


class SubmittedBatch(BaseModel):
    """The answer to a submission: the batch and its requests, one per server to provision.

    The batch is stored when this answer is sent; its chains are sent afterwards, in chunks,
    by the workers (``bms.dispatch_batch``)."""

    batch_id: uuid.UUID
    requests: list[RequestRef]
    #: How many requests were stored.
    total: int


class RequestRow(RequestRef):
    """A request as listed in its batch."""

    position: int
    attempt: int
    failed_step: Step | None
    server_id: str | None
    #: Why it FAILED (or the last error it recovered from): the cloud's code and message.
    last_error_code: str | None = None
    last_error_message: str | None = None
    updated_at: UtcDatetime


class BatchSummary(BaseModel):
    """A batch with how many of its requests are in each state (every state is listed)."""

    id: uuid.UUID
    name: str
    source: BatchSource
    created_at: UtcDatetime
    total: int
    counts: dict[RequestState, int]


class BatchPage(BaseModel):
    """One page of batches, newest first."""

    items: list[BatchSummary]
    total: int
    limit: int
    offset: int


class BatchDetail(BatchSummary):
    """A batch, its counts, and one page of its requests in submission order.

    ``next_cursor``, passed as ``cursor``, reads the page after this one; it is null on the
    last page. Pages follow the submission order, so a request changing state between two
    reads is still listed exactly once."""

    requests: list[RequestRow]
    limit: int
    next_cursor: str | None


class AttachmentView(BaseModel):
    """A volume to attach to the request's server, and how far that got."""

    volume_id: str
    device: str | None
    state: AttachmentState
    job_id: str | None
    attempt: int


class EventView(BaseModel):
    """One entry of a request's timeline (``from_state`` is null for its creation)."""

    at: UtcDatetime
    from_state: RequestState | None
    to_state: RequestState
    detail: str | None


class RequestDetail(BaseModel):
    """Everything known about one request: its spec, where its chain stands, its history."""

    id: uuid.UUID
    batch_id: uuid.UUID
    name: str
    position: int
    state: RequestState
    attempt: int
    server_id: str | None
    job_id: str | None
    failed_step: Step | None
    last_error_code: str | None
    last_error_message: str | None
    addresses: dict[str, Any] | None
    spec: dict[str, Any]
    attachments: list[AttachmentView]
    events: list[EventView]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class BatchCancelled(BaseModel):
    """The requests of the batch that were cancelled now (finished ones are left as they are)."""

    batch_id: uuid.UUID
    cancelled: list[uuid.UUID]


class BatchRetried(BaseModel):
    """The FAILED requests of the batch that were resumed at the step that failed."""

    batch_id: uuid.UUID
    retried: list[uuid.UUID]


class IdempotencyConflictProblem(Problem):
    """409: the Idempotency-Key names a batch whose body was another; nothing was stored."""

    batch_id: uuid.UUID = Field(description="The batch stored under the key.")
    stored_digest: str = Field(description="SHA-256 of that batch's canonical body.")
    submitted_digest: str = Field(description="SHA-256 of this request's canonical body.")


class SkippedRequest(BaseModel):
    """A request a teardown left alone, and why."""

    id: uuid.UUID
    reason: str = Field(examples=["BUILDING: cancel it first", "has no server"])


class BatchTeardown(BaseModel):
    """The requests of the batch now TEARING_DOWN, and those left alone."""

    batch_id: uuid.UUID
    tearing_down: list[uuid.UUID]
    skipped: list[SkippedRequest]


class Check(BaseModel):
    """One dependency's answer; ``error`` says why it did not answer."""

    ok: bool
    error: str | None = None


class Health(BaseModel):
    """``ok`` when the database and the broker both answer; otherwise which one did not."""

    status: Literal["ok", "unavailable"]
    database: Check
    broker: Check


class DeadLetterView(BaseModel):
    """A broker message given up on after it failed ``deliveries`` times."""

    id: uuid.UUID
    task_name: str
    task_id: str
    deliveries: int
    reason: str
    excerpt: str = Field(description="The message's arguments as JSON, cut to 2,000 characters.")
    created_at: UtcDatetime


class DeadLetterPage(BaseModel):
    """One page of dead letters, newest first."""

    items: list[DeadLetterView]
    total: int
    limit: int
    offset: int
