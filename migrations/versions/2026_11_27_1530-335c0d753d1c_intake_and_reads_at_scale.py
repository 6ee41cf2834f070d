"""intake and reads at scale: dispatch watermark, indexes for counts, lists and the reconcilers

Revision ID: 335c0d753d1c
Revises: e366a379f29e
Create Date: 2026-11-27 14:51:22.535048

Keep locks short and stay backward-compatible: workers of the previous release may still run.
The new columns have constant defaults (no table rewrite on PostgreSQL); the indexes are built
``CONCURRENTLY`` there, outside the migration's transaction, so writes go on meanwhile. Batches
stored before this revision were dispatched in full by the intake of their time: their watermark
is set to their size, so that nothing dispatches them again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "335c0d753d1c"
down_revision: str | None = "e366a379f29e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``models.records.watched_clause()`` as the database stores it.
WATCHED = (
    "state IN ('ATTACHING', 'BUILDING', 'CREATING', 'PENDING', 'TAGGING') "
    "OR cleanup_server_id IS NOT NULL "
    "OR state = 'CANCELLED' AND (job_id IS NOT NULL OR create_intent_at IS NOT NULL)"
)
UNDISPATCHED = "dispatched_position < request_count"

#: name, table, columns, partial-index predicate
INDEXES = [
    ("ix_batches_created_at_id", "batches", ["created_at", "id"], None),
    ("ix_batches_undispatched_updated_at", "batches", ["updated_at"], UNDISPATCHED),
    ("ix_server_requests_batch_id_state", "server_requests", ["batch_id", "state"], None),
    ("ix_server_requests_watched_updated_at", "server_requests", ["updated_at"], WATCHED),
]


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("dispatched_position", sa.Integer(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE batches SET request_count = "
        "(SELECT count(*) FROM server_requests WHERE server_requests.batch_id = batches.id)"
    )
    op.execute("UPDATE batches SET dispatched_position = request_count")
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, table, columns, where in INDEXES:
        predicate = {} if where is None else {"postgresql_where": sa.text(where)}
        predicate |= {} if where is None else {"sqlite_where": sa.text(where)}
        if postgresql:
            with op.get_context().autocommit_block():
                op.create_index(name, table, columns, postgresql_concurrently=True, **predicate)
        else:
            op.create_index(name, table, columns, **predicate)


def downgrade() -> None:
    for name, table, _columns, _where in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("dispatched_position")
        batch_op.drop_column("request_count")
