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
- :func:`fold_piled` does the same for every batch, a bounded chunk of rows per transaction:
  the beat task ``bms.fold_counts`` runs it, so that the first read after a bulk change (90,000
  states in one ``UPDATE``: 180,000 rows, 0.4-2 s to fold in the read) finds them folded.
  Folding any subset of a batch's rows into their sums keeps each sum, so a chunk needs no
  more than a compaction does.

The triggers live in the migration, not in the models: on SQLite, a later migration that
rebuilds ``server_requests`` (Alembic's batch mode) drops them, and
``tests/migrations/test_migrations.py`` checks that they exist at head.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import BigInteger, Index, Integer, delete, func, insert, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from models.base import Base
from models.db import session_scope
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


#: Batches one look of :func:`fold_piled` takes (it looks again until none is left).
FOLD_BATCHES_PER_LOOK = 100


def piled_batches(session: Session, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` batches with more rows than states: deltas not folded yet."""
    table = BatchStateCount
    query = (
        select(table.batch_id)
        .group_by(table.batch_id)
        .having(func.count() > func.count(table.state.distinct()))
        .limit(limit)
    )
    return list(session.scalars(query))


def fold_chunk(session: Session, batch_id: uuid.UUID, rows: int) -> int:
    """Fold up to ``rows`` of a batch's rows into one per state; returns how many were folded
    (fewer than ``rows``: the batch had no more, bar those committed since and, on PostgreSQL,
    those a read's compaction is folding)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(_FOLD_CHUNK_POSTGRESQL, {"batch": batch_id, "rows": rows}).scalar()
    # SQLite: the transaction holds the write lock from its start (models.db), as compact's.
    table = BatchStateCount.__table__
    picked = select(table.c.id).where(table.c.batch_id == batch_id).order_by(table.c.id).limit(rows)
    sums = session.execute(
        select(table.c.state, func.sum(table.c.n), func.count())
        .where(table.c.id.in_(picked))
        .group_by(table.c.state)
    ).all()
    session.execute(delete(table).where(table.c.id.in_(picked)))
    folded = [{"batch_id": batch_id, "state": state, "n": n} for state, n, _ in sums if n]
    if folded:
        session.execute(insert(table), folded)
    return sum(entries for _, _, entries in sums)


def fold_piled(sessions: sessionmaker[Session], chunk: int, max_chunks: int) -> int:
    """Fold every piled-up batch's rows, ``chunk`` rows per transaction, at most
    ``max_chunks`` transactions (the next run goes on); returns the rows folded."""
    folded = transactions = 0
    while transactions < max_chunks:
        with session_scope(sessions) as session:
            batch_ids = piled_batches(session, FOLD_BATCHES_PER_LOOK)
        if not batch_ids:
            break
        for batch_id in batch_ids:
            # A batch is done when a chunk comes back short; with at most one row per state
            # left by each chunk, every full chunk shrinks the pile by chunk - states rows.
            while transactions < max_chunks:
                with session_scope(sessions) as session:
                    moved = fold_chunk(session, batch_id, chunk)
                transactions += 1
                folded += moved
                if moved < chunk:
                    break
        if len(batch_ids) < FOLD_BATCHES_PER_LOOK:
            break
    return folded


# The rows are locked before they are deleted, skipping those another transaction holds (a
# read's compaction deleting them: it folds them): this statement then never waits for a row,
# so it cannot deadlock with a compaction that takes the batch's rows in another order. Every
# row it locked it deletes and sums; rows added since are not picked.
_FOLD_CHUNK_POSTGRESQL = text(
    """
    WITH picked AS (
        SELECT id FROM batch_state_counts WHERE batch_id = :batch
        LIMIT :rows FOR UPDATE SKIP LOCKED
    ), moved AS (
        DELETE FROM batch_state_counts WHERE id IN (SELECT id FROM picked)
        RETURNING state, n
    ), folded AS (
        INSERT INTO batch_state_counts (batch_id, state, n)
        SELECT :batch, state, sum(n) FROM moved GROUP BY state HAVING sum(n) <> 0
    )
    SELECT count(*) FROM moved
    """
)
