"""``GET /v1/batches/{id}/webhooks``: where a batch's events go and how each delivery went.

The secret is never shown: only whether one is set.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import Sessions
from api.schemas import InvalidRequest, Problem, UtcDatetime
from models.db import session_scope
from models.records import Batch
from models.webhooks import DeliveryState, WebhookDelivery, WebhookEvent, WebhookTarget

router = APIRouter(prefix="/v1/batches", tags=["webhooks"])


class NotifyView(BaseModel):
    """The batch's ``notify``, without its secret."""

    url: str
    has_secret: bool
    request_events: bool
    completions: int


class DeliveryView(BaseModel):
    """One event sent (or being sent) to the batch's URL."""

    id: uuid.UUID
    event: WebhookEvent
    request_id: uuid.UUID | None
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: UtcDatetime
    next_attempt_at: UtcDatetime | None
    delivered_at: UtcDatetime | None


class WebhookPage(BaseModel):
    """The batch's target (null without ``notify``) and a page of its deliveries, newest
    first; ``counts`` has every delivery counted per state."""

    batch_id: uuid.UUID
    notify: NotifyView | None
    counts: dict[DeliveryState, int]
    deliveries: list[DeliveryView]
    total: int
    limit: int
    offset: int


def notify_view(target: WebhookTarget | None) -> NotifyView | None:
    if target is None:
        return None
    return NotifyView(
        url=target.url,
        has_secret=bool(target.secret),
        request_events=target.request_events,
        completions=target.completions,
    )


def delivery_counts(session: Session, batch_id: uuid.UUID) -> dict[DeliveryState, int]:
    counts = dict.fromkeys(DeliveryState, 0)
    for state, number in session.execute(
        select(WebhookDelivery.state, func.count())
        .where(WebhookDelivery.batch_id == batch_id)
        .group_by(WebhookDelivery.state)
    ):
        counts[state] = number
    return counts


def deliveries(
    session: Session,
    batch_id: uuid.UUID,
    limit: int,
    offset: int,
    request_id: uuid.UUID | None = None,
) -> list[DeliveryView]:
    query = select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
    if request_id is not None:
        query = query.where(WebhookDelivery.request_id == request_id)
    rows = session.scalars(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
        .limit(limit)
        .offset(offset)
    )
    views = []
    for row in rows:
        view = DeliveryView.model_validate(row, from_attributes=True)
        if row.state is not DeliveryState.PENDING:
            view.next_attempt_at = None
        views.append(view)
    return views


def webhook_page(
    session: Session, batch_id: uuid.UUID, limit: int, offset: int
) -> WebhookPage | None:
    if session.get(Batch, batch_id) is None:
        return None
    counts = delivery_counts(session, batch_id)
    return WebhookPage(
        batch_id=batch_id,
        notify=notify_view(session.get(WebhookTarget, batch_id)),
        counts=counts,
        deliveries=deliveries(session, batch_id, limit, offset),
        total=sum(counts.values()),
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{batch_id}/webhooks",
    response_model=WebhookPage,
    summary="Read a batch's webhook target and deliveries",
    responses={
        404: {"model": Problem, "description": "No batch has this id."},
        422: {"model": InvalidRequest, "description": "A bad id, limit or offset."},
    },
)
def read_webhooks(
    batch_id: uuid.UUID,
    sessions: Sessions,
    limit: Annotated[int, Query(ge=1, le=500, description="Deliveries per page.")] = 50,
    offset: Annotated[int, Query(ge=0, description="Deliveries to skip.")] = 0,
) -> WebhookPage:
    """The URL (never the secret), whether request events were asked for, and each delivery:
    event, state (PENDING, DELIVERED, FAILED), attempts, the receiver's last status."""
    with session_scope(sessions) as session:
        page = webhook_page(session, batch_id, limit, offset)
    if page is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"batch {batch_id} not found")
    return page


def metric_families(session: Session):
    """For ``/metrics``: deliveries by event and state, from SQL."""
    family = GaugeMetricFamily(
        "bms_webhook_deliveries",
        "Webhook deliveries by event and state, from the database.",
        labels=["event", "state"],
    )
    counts = {(e, s): 0 for e in WebhookEvent for s in DeliveryState}
    for event_name, state, number in session.execute(
        select(WebhookDelivery.event, WebhookDelivery.state, func.count()).group_by(
            WebhookDelivery.event, WebhookDelivery.state
        )
    ):
        counts[(event_name, state)] = number
    for (event_name, state), number in counts.items():
        family.add_metric([event_name.value, state.value], number)
    yield family
