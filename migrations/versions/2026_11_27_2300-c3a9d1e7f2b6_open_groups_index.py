"""open groups index: the group reconciler's query walks the groups not settled yet

Revision ID: c3a9d1e7f2b6
Revises: 4cf8d9e765e9
Create Date: 2026-11-27 23:00:00.000000

The reconciler looks for count groups no chain watches among the planned and posted ones
(``models.records.open_group_clause()``); a partial index keeps that query off the done groups,
which are nearly all of them. Built ``CONCURRENTLY`` on PostgreSQL (outside the migration's
transaction), so that writes go on meanwhile.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3a9d1e7f2b6"
down_revision: str | None = "4cf8d9e765e9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_create_groups_open_updated_at"
#: ``models.records.open_group_clause()`` as the database stores it.
OPEN = "state IN ('PLANNED', 'POSTED')"


def upgrade() -> None:
    predicate = {"postgresql_where": sa.text(OPEN), "sqlite_where": sa.text(OPEN)}
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                INDEX, "create_groups", ["updated_at"], postgresql_concurrently=True, **predicate
            )
    else:
        op.create_index(INDEX, "create_groups", ["updated_at"], **predicate)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="create_groups")
