"""The dead-letter table: broker messages taken off their queue because they kept failing.

A message that a worker could not finish after ``BMS_MAX_DELIVERIES`` deliveries is acked and
recorded here, with the reason of its last failure, instead of being redelivered forever. Only
a bounded excerpt of its arguments is kept (it is whatever a sender put there).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_at, uuid_pk

#: Characters of a message's arguments kept with its dead letter.
EXCERPT_CHARS = 2000


class DeadLetter(Base):
    """One message given up on: which task, which message, how often, and why."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[uuid_pk]
    task_name: Mapped[str] = mapped_column(String(128))
    #: The Celery task id of the message (a redelivery keeps it).
    task_id: Mapped[str] = mapped_column(String(255), unique=True)
    deliveries: Mapped[int]
    reason: Mapped[str] = mapped_column(String(1000))
    #: The message's arguments as JSON, cut to :data:`EXCERPT_CHARS`.
    excerpt: Mapped[str] = mapped_column(Text)
    created_at: Mapped[created_at]


def new_dead_letter(
    task_name: str, task_id: str, deliveries: int, reason: str, excerpt: str
) -> DeadLetter:
    return DeadLetter(
        id=uuid.uuid4(),
        task_name=task_name[:128],
        task_id=task_id[:255],
        deliveries=deliveries,
        reason=reason[:1000],
        excerpt=excerpt[:EXCERPT_CHARS],
    )
