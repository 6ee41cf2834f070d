"""The read side: what the routes show, each one query (or two) and its mapping to a schema.

Every function takes an open session; ``None`` means the id is unknown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

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
from models.records import Batch, ServerRequest
from models.states import RequestState


def state_counts(
    session: Session, batch_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[RequestState, int]]:
    """Requests per state of each batch, every state listed (zeros included)."""
    ids = list(batch_ids)
    counts = {batch_id: dict.fromkeys(RequestState, 0) for batch_id in ids}
    if not ids:
        return counts
    rows = session.execute(
        select(ServerRequest.batch_id, ServerRequest.state, func.count())
        .where(ServerRequest.batch_id.in_(ids))
        .group_by(ServerRequest.batch_id, ServerRequest.state)
    )
    for batch_id, state, number in rows:
        counts[batch_id][state] = number
    return counts


def _summary(batch: Batch, counts: dict[RequestState, int]) -> dict:
    return {
        "id": batch.id,
        "name": batch.name,
        "source": batch.source,
        "created_at": batch.created_at,
        "total": sum(counts.values()),
        "counts": counts,
    }


def batch_page(session: Session, limit: int, offset: int) -> BatchPage:
    """Batches newest first (the id breaks ties, so pages never overlap)."""
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
    items = [BatchSummary(**_summary(b, counts[b.id])) for b in batches]
    return BatchPage(items=items, total=total, limit=limit, offset=offset)


def batch_detail(session: Session, batch_id: uuid.UUID) -> BatchDetail | None:
    batch = session.get(Batch, batch_id, options=[selectinload(Batch.requests)])
    if batch is None:
        return None
    counts = state_counts(session, [batch.id])[batch.id]
    rows = [RequestRow.model_validate(r, from_attributes=True) for r in batch.requests]
    return BatchDetail(**_summary(batch, counts), requests=rows)


def batch_request_ids(session: Session, batch_id: uuid.UUID) -> list[uuid.UUID] | None:
    """The batch's request ids in submission order."""
    if session.get(Batch, batch_id) is None:
        return None
    query = select(ServerRequest.id).where(ServerRequest.batch_id == batch_id)
    return list(session.scalars(query.order_by(ServerRequest.position)))


def submitted_batch(
    session: Session, batch_id: uuid.UUID, request_ids: list[uuid.UUID]
) -> SubmittedBatch:
    """The answer to a submission, with each request's state as it is now."""
    requests = session.scalars(select(ServerRequest).where(ServerRequest.id.in_(request_ids)))
    by_id = {r.id: r for r in requests}
    refs = [RequestRef.model_validate(by_id[i], from_attributes=True) for i in request_ids]
    return SubmittedBatch(batch_id=batch_id, requests=refs)


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
