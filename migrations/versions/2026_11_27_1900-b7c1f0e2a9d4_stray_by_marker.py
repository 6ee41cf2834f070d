"""stray by marker

Revision ID: b7c1f0e2a9d4
Revises: ec9d75e83181
Create Date: 2026-11-27 19:00:00.000000

A stray may be known only by its create's marker (a create given up while its answer was lost):
the sweeper lists the request's name and deletes what carries the marker. Nullable: rows of the
previous release have none, and its workers never write it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7c1f0e2a9d4"
down_revision: str | None = "ec9d75e83181"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stray_servers") as batch:
        batch.add_column(sa.Column("marker", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stray_servers") as batch:
        batch.drop_column("marker")
