"""teardown and batch digest

Revision ID: ec9d75e83181
Revises: b7c1e2d3f4a5
Create Date: 2026-11-27 15:12:24.098843

Only nullable columns and one counter with a server default of 0, so rows of running requests
stay valid and workers of the previous release keep working. Two changes follow from the new
states and events:

- The reconciler watches TEARING_DOWN requests too, so its partial index takes the new
  predicate (``models.records.watched_clause()``); on PostgreSQL the new index is built
  ``CONCURRENTLY`` beside the old one, which is dropped after, so the reconciler's query always
  has one to walk.
- ``webhook_deliveries.event`` grows to 32 characters for ``request.torn_down``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ec9d75e83181"
down_revision: str | None = "b7c1e2d3f4a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WATCHED_INDEX = "ix_server_requests_watched_updated_at"
#: ``models.records.watched_clause()`` as the database stores it, before and after.
WATCHED_BEFORE = (
    "state IN ('ATTACHING', 'BUILDING', 'CREATING', 'PENDING', 'TAGGING') "
    "OR cleanup_server_id IS NOT NULL "
    "OR state = 'CANCELLED' AND (job_id IS NOT NULL OR create_intent_at IS NOT NULL)"
)
WATCHED_AFTER = WATCHED_BEFORE.replace("'TAGGING')", "'TAGGING', 'TEARING_DOWN')")
OLD_EVENTS = ("batch.completed", "request.finished")
NEW_EVENTS = (*OLD_EVENTS, "request.torn_down")


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_digest", sa.String(length=64), nullable=True))

    with op.batch_alter_table("server_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("teardown_intent_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("teardown_job_id", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column(
                "teardown_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False
            )
        )
    _event_column(OLD_EVENTS, NEW_EVENTS, 16, 32)
    _watched_index(WATCHED_AFTER)


def downgrade() -> None:
    _watched_index(WATCHED_BEFORE)
    # The older release knows no teardown event: its deliveries go with the wider column.
    op.execute("DELETE FROM webhook_deliveries WHERE event = 'request.torn_down'")
    _event_column(NEW_EVENTS, OLD_EVENTS, 32, 16)
    with op.batch_alter_table("server_requests", schema=None) as batch_op:
        batch_op.drop_column("teardown_attempts")
        batch_op.drop_column("teardown_job_id")
        batch_op.drop_column("teardown_intent_at")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("body_digest")


def _event_column(old: tuple, new: tuple, old_length: int, new_length: int) -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.alter_column(
            "event",
            existing_type=sa.Enum(*old, name="webhookevent", native_enum=False, length=old_length),
            type_=sa.Enum(*new, name="webhookevent", native_enum=False, length=new_length),
            existing_nullable=False,
        )


def _watched_index(predicate: str) -> None:
    """Replace the reconciler's partial index by one with ``predicate``."""
    where = {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(WATCHED_INDEX, table_name="server_requests")
        op.create_index(WATCHED_INDEX, "server_requests", ["updated_at"], **where)
        return
    building = f"{WATCHED_INDEX}_next"
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {building}")  # a build that died
        op.create_index(
            building, "server_requests", ["updated_at"], postgresql_concurrently=True, **where
        )
        op.drop_index(WATCHED_INDEX, table_name="server_requests", postgresql_concurrently=True)
        op.execute(f"ALTER INDEX {building} RENAME TO {WATCHED_INDEX}")
