"""The read side: what the routes show, each one query (or two) and its mapping to a schema.

Counts per state come from ``batch_state_counts`` (:func:`models.counts.state_counts`, kept
by the database in each change's transaction), not from counting a batch's requests.

Every function takes an open session; ``None`` means the id is unknown.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from api.schemas import (
    AttachmentView,
    BatchDetail,
    BatchPage,
    BatchSummary,
    EventView,
    RequestDetail,
    RequestRef,
    RequestRow,
    SubmittedBatch,
)
from models.counts import state_counts
from models.records import Batch, ServerRequest
from models.states import RequestState


def _summary(batch: Batch, counts: dict[RequestState, int]) -> dict:
    return {
        "id": batch.id,
        "name": batch.name,
        "source": batch.source,
        "created_at": batch.created_at,
        "total": sum(counts.values()),
        "counts": counts,
    }


def newest_batches(session: Session, limit: int, offset: int):
    """A page of batches newest first (the id breaks ties, so pages never overlap), their
    counts per state (one grouped query) and how many batches there are."""
    batches = list(
        session.scalars(
            select(Batch)
            .order_by(Batch.created_at.desc(), Batch.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    counts = state_counts(session, (b.id for b in batches))
    total = session.scalar(select(func.count()).select_from(Batch)) or 0
    return batches, counts, total


def batch_page(session: Session, limit: int, offset: int) -> BatchPage:
    """Batches newest first, each with its counts."""
    batches, counts, total = newest_batches(session, limit, offset)
    items = [BatchSummary(**_summary(b, counts[b.id])) for b in batches]
    return BatchPage(items=items, total=total, limit=limit, offset=offset)


#: The columns of a request as listed in its batch (never its spec).
_ROW_COLUMNS = tuple(getattr(ServerRequest, name) for name in RequestRow.model_fields)


def batch_detail(
    session: Session, batch_id: uuid.UUID, limit: int, after: int | None = None
) -> BatchDetail | None:
    """The batch, its counts, and up to ``limit`` of its requests from position ``after + 1``
    (keyset paging on the batch's ``(batch_id, position)`` index)."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    counts = state_counts(session, [batch.id])[batch.id]
    query = select(*_ROW_COLUMNS).where(ServerRequest.batch_id == batch_id)
    if after is not None:
        query = query.where(ServerRequest.position > after)
    rows = session.execute(query.order_by(ServerRequest.position).limit(limit + 1)).all()
    next_cursor = encode_cursor(rows[limit - 1].position) if len(rows) > limit else None
    requests = [RequestRow(**row._mapping) for row in rows[:limit]]
    return BatchDetail(
        **_summary(batch, counts), requests=requests, limit=limit, next_cursor=next_cursor
    )


def encode_cursor(position: int) -> str:
    """The cursor of the page after the request at ``position``."""
    return str(position)


def decode_cursor(cursor: str) -> int:
    """The position a cursor continues after; :class:`ValueError` if it is not one."""
    if not cursor.isdigit() or len(cursor) > 9:
        raise ValueError(cursor)
    return int(cursor)


def batch_request_ids(session: Session, batch_id: uuid.UUID) -> list[uuid.UUID] | None:
    """The batch's request ids in submission order."""
    if session.get(Batch, batch_id) is None:
        return None
    query = select(ServerRequest.id).where(ServerRequest.batch_id == batch_id)
    return list(session.scalars(query.order_by(ServerRequest.position)))


def submitted_batch(session: Session, batch_id: uuid.UUID) -> SubmittedBatch:
    """The answer to a replayed submission, with each request's state as it is now."""
    rows = session.execute(
        select(ServerRequest.id, ServerRequest.name, ServerRequest.state)
        .where(ServerRequest.batch_id == batch_id)
        .order_by(ServerRequest.position)
    ).all()
    refs = [RequestRef(id=r.id, name=r.name, state=r.state) for r in rows]
    return SubmittedBatch(batch_id=batch_id, requests=refs, total=len(refs))


def request_ref(session: Session, request_id: uuid.UUID) -> RequestRef | None:
    request = session.get(ServerRequest, request_id)
    return RequestRef.model_validate(request, from_attributes=True) if request else None


def request_detail(session: Session, request_id: uuid.UUID) -> RequestDetail | None:
    request = session.get(
        ServerRequest,
        request_id,
        options=[selectinload(ServerRequest.attachments), selectinload(ServerRequest.events)],
    )
    if request is None:
        return None
    return RequestDetail(
        **{name: getattr(request, name) for name in _DETAIL_COLUMNS},
        attachments=[
            AttachmentView.model_validate(a, from_attributes=True) for a in request.attachments
        ],
        events=[EventView.model_validate(e, from_attributes=True) for e in request.events],
    )


#: The request's own columns shown by ``GET /v1/requests/{id}``; the create marker, intent time
#: and fencing token are the chain's bookkeeping, not the operator's.
_DETAIL_COLUMNS = (
    "id",
    "batch_id",
    "name",
    "position",
    "state",
    "attempt",
    "server_id",
    "job_id",
    "failed_step",
    "last_error_code",
    "last_error_message",
    "addresses",
    "spec",
    "created_at",
    "updated_at",
)
