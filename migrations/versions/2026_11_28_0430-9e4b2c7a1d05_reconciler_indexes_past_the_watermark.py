"""reconciler indexes past the watermark: started requests by update, PENDING ones by batch

Revision ID: 9e4b2c7a1d05
Revises: c3a9d1e7f2b6
Create Date: 2026-11-28 04:30:00.000000

The reconciler's partial index held every PENDING request, and most of those wait behind their
batch's dispatch watermark (not on the row): on a 100,000-request database its query walked
9,000 of them, each with a look at its batch, to find none. It now walks two indexes
(``tasks.control.stalled_request_ids``): the watched requests past PENDING by update
(``models.records.started_clause()``), and the PENDING ones by batch and position, below each
batch's watermark. Built ``CONCURRENTLY`` on PostgreSQL before the old index is dropped, so
that the reconciler of either release always has an index to walk.
"""

from collections.abc import Sequence
from contextlib import nullcontext

import sqlalchemy as sa
from alembic import op

revision: str = "9e4b2c7a1d05"
down_revision: str | None = "c3a9d1e7f2b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``models.records.watched_clause()`` as the database stores it.
WATCHED = (
    "state IN ('ATTACHING', 'BUILDING', 'CREATING', 'PENDING', 'TAGGING', 'TEARING_DOWN') "
    "OR cleanup_server_id IS NOT NULL "
    "OR state = 'CANCELLED' AND (job_id IS NOT NULL OR create_intent_at IS NOT NULL)"
)
#: ``models.records.started_clause()``.
STARTED = f"state != 'PENDING' AND ({WATCHED})"

OLD = [("ix_server_requests_watched_updated_at", ["updated_at"], WATCHED)]
NEW = [
    ("ix_server_requests_started_updated_at", ["updated_at"], STARTED),
    ("ix_server_requests_pending_batch_id_position", ["batch_id", "position"], "state = 'PENDING'"),
]


def upgrade() -> None:
    _replace(OLD, NEW)


def downgrade() -> None:
    _replace(NEW, OLD)


def _replace(old: list, new: list) -> None:
    """Build the ``new`` indexes, then drop the ``old`` ones."""
    concurrently = op.get_bind().dialect.name == "postgresql"
    with op.get_context().autocommit_block() if concurrently else nullcontext():
        for name, columns, predicate in new:
            if concurrently:  # a build that died leaves an invalid index of that name
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.create_index(
                name,
                "server_requests",
                columns,
                postgresql_where=sa.text(predicate),
                sqlite_where=sa.text(predicate),
                postgresql_concurrently=concurrently,
            )
        for name, _columns, _predicate in old:
            op.drop_index(name, table_name="server_requests", postgresql_concurrently=concurrently)
