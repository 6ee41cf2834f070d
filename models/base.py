"""The declarative base: naming convention, shared column types, timestamps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from sqlalchemy import DateTime, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Constraint names Alembic can reproduce on every backend (SQLite batch mode needs them).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive; every timestamp we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


uuid_pk = Annotated[uuid.UUID, mapped_column(primary_key=True, default=uuid.uuid4)]
created_at = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]
updated_at = Annotated[
    datetime, mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
]
#: Cloud identifiers (server, job, volume ids) are at most 64 characters in every API we use.
cloud_id = Annotated[str, mapped_column(String(64))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Timestamped:
    """Creation and last-update times, set by the ORM."""

    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]
