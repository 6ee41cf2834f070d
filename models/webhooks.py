"""The webhook tables: where a batch wants to be told, and every delivery of an event there.

A delivery row is the whole truth of one event: its signed body is built from ``payload``, its
attempts and last answer are recorded on it, and its Celery message carries only its id (the
secret stays in ``webhook_targets``, read by the delivery task alone).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamped, utcnow, uuid_pk


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"  # not accepted yet; another attempt is due at next_attempt_at
    DELIVERED = "DELIVERED"  # the receiver answered 2xx
    FAILED = "FAILED"  # given up: no 2xx within the retry period (24 h)


class WebhookEvent(enum.StrEnum):
    BATCH_COMPLETED = "batch.completed"
    REQUEST_FINISHED = "request.finished"
    #: A request's teardown ended (TORN_DOWN, or FAILED or CANCELLED out of TEARING_DOWN).
    REQUEST_TORN_DOWN = "request.torn_down"


def _enum(enum_class: type[enum.Enum], length: int = 16) -> Enum:
    return Enum(
        enum_class,
        native_enum=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
    )


class WebhookTarget(Timestamped, Base):
    """A batch's ``notify``: the URL, the HMAC secret, and how far its completion got."""

    __tablename__ = "webhook_targets"

    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    #: The HMAC-SHA256 key. Never returned by the API, logged, or put in a task message.
    secret: Mapped[str | None] = mapped_column(String(256))
    #: Also send ``request.finished`` for each request that reaches a final state.
    request_events: Mapped[bool] = mapped_column(default=False)
    #: True while the batch has requests not yet settled (a retry opens it again).
    open: Mapped[bool] = mapped_column(default=True)
    #: ``batch.completed`` events made so far (a batch retried completes once more).
    completions: Mapped[int] = mapped_column(default=0)


class WebhookDelivery(Timestamped, Base):
    """One event for one target, and how its delivery went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "batch_id", "created_at"),
        Index(None, "state", "next_attempt_at"),
        Index(None, "request_id"),
    )

    id: Mapped[uuid_pk]
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"))
    request_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("server_requests.id"))
    event: Mapped[WebhookEvent] = mapped_column(_enum(WebhookEvent, 32))
    #: One delivery per event, whoever notices it first: ``<event>:<batch or request>:<n>``.
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    #: The event's JSON body (no secret in it).
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    #: The receiver's last HTTP status; None when it did not answer.
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(300))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Set while an attempt is under way, so that a duplicate message does not POST twice.
    leased_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
