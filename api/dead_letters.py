"""Routes of ``/v1/dead-letters``: broker messages given up on, and why (``tasks.poison``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from api.batches import INVALID, MAX_OFFSET
from api.deps import Sessions
from api.schemas import DeadLetterPage, DeadLetterView
from models.db import session_scope
from models.dead_letters import DeadLetter

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


@router.get(
    "", response_model=DeadLetterPage, summary="List dead letters, newest first", responses=INVALID
)
def list_dead_letters(
    sessions: Sessions,
    limit: Annotated[int, Query(ge=1, le=500, description="Dead letters per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Dead letters to skip.")] = 0,
) -> DeadLetterPage:
    """Messages of ``bms.submit_batch`` that no worker could finish in ``BMS_MAX_DELIVERIES``
    deliveries: taken off the queue, with the reason of their last failure and an excerpt of
    their arguments. Nothing of them was stored."""
    with session_scope(sessions) as session:
        rows = session.scalars(
            select(DeadLetter)
            .order_by(DeadLetter.created_at.desc(), DeadLetter.id.desc())
            .limit(limit)
            .offset(offset)
        )
        items = [DeadLetterView.model_validate(row, from_attributes=True) for row in rows]
        total = session.scalar(select(func.count()).select_from(DeadLetter)) or 0
    return DeadLetterPage(items=items, total=total, limit=limit, offset=offset)
