"""Requests per state of each batch, kept by the database as they change.

``GET /v1/batches`` shows the counts of 50 batches: counted from ``server_requests`` that is one
index entry per request of those batches (110,000 for a page of eleven 10,000-server batches),
so the read grew with the batches' sizes. Here the counts are kept in ``batch_state_counts``
instead, in the transaction of every change:

- Database triggers on ``server_requests`` (see the migration ``4cf8d9e765e9``) append a row
  ``(batch, state, n)`` for each change of a request's state: ``+1`` for the state entered,
  ``-1`` for the state left, and one ``+n`` per state for a bulk insert. A batch's count of a
  state is the sum of its rows. Rows are only ever *inserted* by writers, so a transition
  waits on no counter lock and cannot deadlock on one; whatever path changes a state (the ORM,
  a bulk ``UPDATE``, ``COPY``), it is counted, and it is counted only if it commits.
- :func:`compact` folds a batch's rows into one per state. A read does it when a batch has
  more than :data:`COMPACT_ABOVE` rows, so a read sums a bounded number of rows. It deletes the
  rows it sees and inserts their sums in one statement: rows another transaction is adding are
  invisible to it and stay, rows another compaction deleted first are skipped (PostgreSQL
  re-checks a row it waited for), so every delta is counted exactly once.

The triggers live in the migration, not in the models: on SQLite, a later migration that
rebuilds ``server_requests`` (Alembic's batch mode) drops them, and
``tests/migrations/test_migrations.py`` checks that they exist at head.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import BigInteger, Index, Integer, delete, func, insert, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.records import _enum
from models.states import RequestState

#: Rows of one batch above which a read folds them (a few per state is the usual).
COMPACT_ABOVE = 64


class BatchStateCount(Base):
    """A change of a batch's count of requests in a state (see the module's docstring)."""

    __tablename__ = "batch_state_counts"
    __table_args__ = (
        # Sums per (batch, state) from the index alone.
        Index(None, "batch_id", "state", "n"),
    )

    # 64 bits: two rows per transition, never reused (SQLite's rowid is 64 bits already).
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    batch_id: Mapped[uuid.UUID]
    state: Mapped[RequestState] = mapped_column(_enum(RequestState))
    n: Mapped[int]


def state_counts(
    session: Session, batch_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[RequestState, int]]:
    """Requests per state of each batch, every state listed (zeros included); the batches
    whose rows have piled up are compacted in the caller's transaction."""
    ids = list(batch_ids)
    counts = {batch_id: dict.fromkeys(RequestState, 0) for batch_id in ids}
    if not ids:
        return counts
    table = BatchStateCount
    rows = session.execute(
        select(table.batch_id, table.state, func.sum(table.n), func.count())
        .where(table.batch_id.in_(ids))
        .group_by(table.batch_id, table.state)
    )
    piled: dict[uuid.UUID, int] = {}
    for batch_id, state, number, entries in rows:
        counts[batch_id][state] = int(number)
        piled[batch_id] = piled.get(batch_id, 0) + entries
    compact(session, [batch_id for batch_id, entries in piled.items() if entries > COMPACT_ABOVE])
    return counts


def compact(session: Session, batch_ids: list[uuid.UUID]) -> None:
    """Fold each batch's rows into one per state (none for a state at zero)."""
    if not batch_ids:
        return
    table = BatchStateCount.__table__
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_COMPACT_POSTGRESQL, {"ids": batch_ids})
        return
    # SQLite: every transaction holds the database's write lock from its start
    # (models.db), so no other writer runs between these statements.
    sums = session.execute(
        select(table.c.batch_id, table.c.state, func.sum(table.c.n))
        .where(table.c.batch_id.in_(batch_ids))
        .group_by(table.c.batch_id, table.c.state)
        .having(func.sum(table.c.n) != 0)
    ).all()
    session.execute(delete(table).where(table.c.batch_id.in_(batch_ids)))
    if sums:
        session.execute(insert(table), [{"batch_id": b, "state": s, "n": n} for b, s, n in sums])


_COMPACT_POSTGRESQL = text(
    """
    WITH moved AS (
        DELETE FROM batch_state_counts WHERE batch_id = ANY(:ids)
        RETURNING batch_id, state, n
    )
    INSERT INTO batch_state_counts (batch_id, state, n)
    SELECT batch_id, state, sum(n) FROM moved GROUP BY batch_id, state HAVING sum(n) <> 0
    """
)
