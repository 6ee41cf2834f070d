"""The tables: batches, server requests, their volume attachments, cloud jobs and events.

The database is the source of truth for every request; Celery messages only carry ids.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, Enum, ForeignKey, Index, String, Text, or_
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import Base, Timestamped, cloud_id, utcnow, uuid_pk
from models.states import IN_FLIGHT_STATES, RequestState, Step, check_transition


def _enum(enum_class: type[enum.Enum]) -> Enum:
    """Store an enum by its value, as a plain string column (no native ENUM type to migrate)."""
    return Enum(
        enum_class,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class BatchSource(enum.StrEnum):
    API = "api"
    CLI = "cli"
    TASK = "task"


class AttachmentState(enum.StrEnum):
    PENDING = "PENDING"
    ATTACHING = "ATTACHING"
    ATTACHED = "ATTACHED"
    FAILED = "FAILED"
    # Teardown: queued, intent recorded (then its job id), done, or left for the delete.
    TO_DETACH = "TO_DETACH"
    DETACHING = "DETACHING"
    DETACHED = "DETACHED"
    KEPT = "KEPT"


class JobKind(enum.StrEnum):
    CREATE = "create"
    ATTACH = "attach"
    DELETE = "delete"
    DETACH = "detach"


class Batch(Timestamped, Base):
    """A set of server requests submitted together."""

    __tablename__ = "batches"
    __table_args__ = (
        # GET /v1/batches: newest first, the id breaking ties.
        Index(None, "created_at", "id"),
    )

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(String(64))
    source: Mapped[BatchSource] = mapped_column(_enum(BatchSource))
    #: Given by the submitter; a resubmission with the same key returns this batch.
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    #: How many requests the batch has (stored with them, in the same transaction).
    request_count: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Dispatch watermark: the requests at positions below it have had their chains sent.
    #: ``bms.dispatch_batch`` moves it chunk by chunk; the batch reconciler finishes the job
    #: of a dispatch that died.
    dispatched_position: Mapped[int] = mapped_column(default=0, server_default="0")
    #: SHA-256 of the canonical batch (``models.canonical``): a resubmission with the same key
    #: and another body is refused. ``None`` for batches stored before it was kept.
    body_digest: Mapped[str | None] = mapped_column(String(64))

    requests: Mapped[list[ServerRequest]] = relationship(
        back_populates="batch", order_by="ServerRequest.position"
    )


class ServerRequest(Timestamped, Base):
    """One bare metal server to provision, and where its chain stands."""

    __tablename__ = "server_requests"
    __table_args__ = (
        Index(None, "batch_id", "position"),
        Index(None, "state", "updated_at"),
        # Counts per state of a batch, from the index alone.
        Index(None, "batch_id", "state"),
    )

    id: Mapped[uuid_pk]
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"))
    #: Order within the batch, for stable listings.
    position: Mapped[int]
    #: The server name the cloud should end up with.
    name: Mapped[str] = mapped_column(String(63))
    #: The validated create body for one server (``count`` already expanded to 1).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[RequestState] = mapped_column(_enum(RequestState), default=RequestState.PENDING)
    #: Create attempts made so far (1 on the first create).
    attempt: Mapped[int] = mapped_column(default=0)
    failed_step: Mapped[Step | None] = mapped_column(_enum(Step))
    #: The last step of the TAGGING stage done (tag, rename), so a redelivery skips it.
    step_done: Mapped[Step | None] = mapped_column(_enum(Step))
    server_id: Mapped[str | None] = mapped_column(String(64))
    #: The cloud job the request is waiting on now (create job, then each attach job).
    job_id: Mapped[str | None] = mapped_column(String(64))
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    #: Carried by the server (name and metadata) so a re-run finds a create that went through.
    create_marker: Mapped[str | None] = mapped_column(String(32), unique=True)
    #: Set, with the marker, just before the create POST: "a create may be in the cloud".
    create_intent_at: Mapped[datetime | None]
    #: A failed or cancelled server to delete before anything else happens to the request.
    cleanup_server_id: Mapped[str | None] = mapped_column(String(64))
    #: The delete job of ``cleanup_server_id``, watched to its end before the request goes on.
    cleanup_job_id: Mapped[str | None] = mapped_column(String(64))
    #: The server's addresses, recorded when it is finalized.
    addresses: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Teardown: set just before the delete POST ("a delete may be in the cloud").
    teardown_intent_at: Mapped[datetime | None]
    #: Teardown: the delete job of ``server_id``, watched to its end.
    teardown_job_id: Mapped[str | None] = mapped_column(String(64))
    #: Teardown: delete calls made (its budget is ``BMS_MAX_ATTEMPTS``).
    teardown_attempts: Mapped[int] = mapped_column(default=0)
    #: Ownership token of the request's one live chain. Every hand-off (a step sending the next
    #: step or re-scheduling itself, dispatch, the reconciler) advances it in the transaction
    #: that decides the hand-off, and the message sent carries the new value; a message whose
    #: token is not the row's (a redelivered or duplicated one) does nothing.
    fence: Mapped[int] = mapped_column(default=0)
    #: Chains the reconciler rebuilt since the request last moved on; bounded, then FAILED.
    restarts: Mapped[int] = mapped_column(default=0)
    #: Create attempts ever made, never reset (a retry resets ``attempt``): markers use it, so a
    #: marker never repeats and cannot adopt a leftover of an earlier cycle.
    create_serial: Mapped[int] = mapped_column(default=0)
    #: End of a wait that has no cloud job row to date it (an adopted server building).
    wait_deadline_at: Mapped[datetime | None]
    #: Delete calls made for the current ``cleanup_server_id`` (its budget).
    cleanup_attempts: Mapped[int] = mapped_column(default=0)
    #: The ``count`` create this request is made by (``None``: created on its own).
    group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("create_groups.id"), index=True)
    #: Order within its group, as planned (its name's place in the run).
    group_index: Mapped[int | None]
    #: The name the group's create gave the server (``base-NNNN`` of its place in the call);
    #: when it is not ``name`` (a later chunk, a member cancelled before it), it is renamed.
    cloud_name: Mapped[str | None] = mapped_column(String(63))

    batch: Mapped[Batch] = relationship(back_populates="requests")
    attachments: Mapped[list[VolumeAttachment]] = relationship(
        back_populates="request", order_by="VolumeAttachment.position"
    )
    events: Mapped[list[Event]] = relationship(
        back_populates="request", order_by="Event.id", viewonly=True
    )


def watched_clause() -> ColumnElement[bool]:
    """Requests the reconciler watches: unfinished, or with a server left to delete, or a
    cancelled create still in flight. One definition for its query and its partial index, so
    that the index's predicate is the query's own."""
    S = RequestState
    return or_(
        ServerRequest.state.in_(sorted(IN_FLIGHT_STATES)),
        ServerRequest.cleanup_server_id.is_not(None),
        (ServerRequest.state == S.CANCELLED)
        & (ServerRequest.job_id.is_not(None) | ServerRequest.create_intent_at.is_not(None)),
    )


def started_clause() -> ColumnElement[bool]:
    """The watched requests past PENDING: a chain took them on (or a server is left to
    delete). The PENDING ones are left out: most of them wait behind their batch's dispatch
    watermark, which is not on the row, so an index of them would be walked in vain."""
    return (ServerRequest.state != RequestState.PENDING) & watched_clause()


#: The reconciler's query walks the started requests, oldest update first...
Index(
    "ix_server_requests_started_updated_at",
    ServerRequest.updated_at,
    postgresql_where=started_clause(),
    sqlite_where=started_clause(),
)
#: ... and finds the PENDING ones below their batch's watermark batch by batch.
Index(
    "ix_server_requests_pending_batch_id_position",
    ServerRequest.batch_id,
    ServerRequest.position,
    postgresql_where=ServerRequest.state == RequestState.PENDING,
    sqlite_where=ServerRequest.state == RequestState.PENDING,
)


class VolumeAttachment(Timestamped, Base):
    """An existing cloud disk to attach to the request's server, one at a time, in order."""

    __tablename__ = "volume_attachments"
    __table_args__ = (Index(None, "request_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("server_requests.id"))
    position: Mapped[int]
    volume_id: Mapped[cloud_id]
    device: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[AttachmentState] = mapped_column(
        _enum(AttachmentState), default=AttachmentState.PENDING
    )
    job_id: Mapped[str | None] = mapped_column(String(64))
    #: Attach calls the cloud may have acted on (accepted, or sent with the answer lost).
    attempt: Mapped[int] = mapped_column(default=0)
    #: Set just before the attach POST and cleared when its answer is recorded: "an attach of
    #: this volume may be in the cloud", so a re-run looks before it attaches again.
    intent_at: Mapped[datetime | None]

    request: Mapped[ServerRequest] = relationship(back_populates="attachments")


#: The batch reconciler's query: batches whose dispatch has not reached their last request.
Index(
    "ix_batches_undispatched_updated_at",
    Batch.updated_at,
    postgresql_where=Batch.dispatched_position < Batch.request_count,
    sqlite_where=Batch.dispatched_position < Batch.request_count,
)


class CloudJob(Timestamped, Base):
    """Every asynchronous cloud job the orchestrator started, and how it went."""

    __tablename__ = "cloud_jobs"
    __table_args__ = (Index(None, "request_id"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("server_requests.id"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    #: The cloud's status: INIT, RUNNING, SUCCESS, FAIL (or PENDING_PAYMENT).
    status: Mapped[str] = mapped_column(String(16), default="INIT")
    polls: Mapped[int] = mapped_column(default=0)
    begin_time: Mapped[str | None] = mapped_column(String(32))
    end_time: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    fail_reason: Mapped[str | None] = mapped_column(Text)


class GroupState(enum.StrEnum):
    PLANNED = "PLANNED"  # not created yet (an intent may be recorded)
    POSTED = "POSTED"  # the create job is known and watched
    DONE = "DONE"  # its results are handed to the members; it does nothing more


class CreateGroup(Timestamped, Base):
    """One ``count`` create of up to ``BMS_CREATE_GROUP_MAX`` requests of a batch.

    Planned before the batch's first dispatch (``tasks.group_create``); created once by the
    first member step that runs, watched by one poll, its results handed to each member.
    """

    __tablename__ = "create_groups"

    id: Mapped[uuid_pk]
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"), index=True)
    #: The members' base name (``web`` of ``web-0000``) and the index of the first member.
    base_name: Mapped[str] = mapped_column(String(63))
    first_index: Mapped[int] = mapped_column(default=0)
    #: Members planned.
    size: Mapped[int]
    state: Mapped[GroupState] = mapped_column(_enum(GroupState), default=GroupState.PLANNED)
    #: In the metadata of every server of the group's create: how a lost answer is found.
    marker: Mapped[str] = mapped_column(String(32), unique=True)
    #: Set just before the POST: "the group's create may be in the cloud".
    intent_at: Mapped[datetime | None]
    #: The name sent with ``count`` (the servers are ``cloud_base-0000`` ...), and ``count``.
    cloud_base: Mapped[str | None] = mapped_column(String(63))
    count: Mapped[int | None]
    job_id: Mapped[str | None] = mapped_column(String(64))
    #: The member whose messages poll the job, and when it last did (a lease: another member
    #: takes the poll over once it is older than the reconciler's idle time).
    poller_id: Mapped[uuid.UUID | None]
    polled_at: Mapped[datetime | None]


def open_group_clause() -> ColumnElement[bool]:
    """Groups whose call is not settled yet (planned, or posted): the only ones the group
    reconciler looks at. One definition for its query and its partial index."""
    return CreateGroup.state.in_([GroupState.PLANNED, GroupState.POSTED])


#: The group reconciler's query walks only the open groups, oldest update first.
Index(
    "ix_create_groups_open_updated_at",
    CreateGroup.updated_at,
    postgresql_where=open_group_clause(),
    sqlite_where=open_group_clause(),
)


class StrayState(enum.StrEnum):
    PENDING = "PENDING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    ABANDONED = "ABANDONED"


class StrayServer(Timestamped, Base):
    """A server the orchestrator made but will not use, queued for deletion by the sweeper.

    A create answered after another chain had moved the request on, or a second server found
    with a request's marker. Only the create job (or only the marker, when the create's answer
    was lost) may be known at first: the sweeper reads the job (or lists the request's name) for
    the server ids, then deletes them and watches the delete job to its end.
    """

    __tablename__ = "stray_servers"
    __table_args__ = (Index(None, "state", "updated_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("server_requests.id"))
    server_id: Mapped[str | None] = mapped_column(String(64))
    create_job_id: Mapped[str | None] = mapped_column(String(64))
    #: Known only by its create's marker (that create's answer was lost): found by listing.
    marker: Mapped[str | None] = mapped_column(String(64))
    delete_job_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StrayState] = mapped_column(_enum(StrayState), default=StrayState.PENDING)
    #: Sweeps that acted on it (reads of its job, delete calls); bounded, then ABANDONED.
    attempts: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str] = mapped_column(Text)


class Event(Base):
    """Append-only history of a request's states."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("server_requests.id"))
    from_state: Mapped[RequestState | None] = mapped_column(_enum(RequestState))
    to_state: Mapped[RequestState] = mapped_column(_enum(RequestState))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)

    request: Mapped[ServerRequest] = relationship(back_populates="events", viewonly=True)


def transition(
    session: Session,
    request: ServerRequest,
    to_state: RequestState,
    detail: str | None = None,
) -> Event:
    """Move ``request`` to ``to_state`` and append its event, in the caller's transaction.

    :raises models.states.IllegalTransition: the table does not allow this change; nothing is
        written.
    """
    check_transition(request.state, to_state)
    event = Event(request_id=request.id, from_state=request.state, to_state=to_state, detail=detail)
    request.state = to_state
    request.updated_at = utcnow()
    session.add(event)
    return event


def record_creation(session: Session, request: ServerRequest, detail: str | None = None) -> None:
    """Append the first event of a new request (``None -> PENDING``)."""
    session.add(
        Event(request_id=request.id, from_state=None, to_state=request.state, detail=detail)
    )


def record_note(session: Session, request: ServerRequest, detail: str) -> None:
    """Append an event for a side effect that changes no state (a server deleted, say)."""
    session.add(
        Event(
            request_id=request.id, from_state=request.state, to_state=request.state, detail=detail
        )
    )
