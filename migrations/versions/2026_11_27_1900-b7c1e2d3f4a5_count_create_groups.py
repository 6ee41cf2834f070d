"""count create groups

Revision ID: b7c1e2d3f4a5
Revises: 93d4396ced5e
Create Date: 2026-11-27 19:00:00.000000

Keep locks short and stay backward-compatible: workers of the previous release may still run
(the new columns are nullable; a request without a group is created on its own, as before).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7c1e2d3f4a5"
down_revision: str | None = "93d4396ced5e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "create_groups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("base_name", sa.String(length=63), nullable=False),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("PLANNED", "POSTED", "DONE", name="groupstate", native_enum=False, length=16),
            nullable=False,
        ),  # fmt: skip
        sa.Column("marker", sa.String(length=32), nullable=False),
        sa.Column("intent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cloud_base", sa.String(length=63), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("poller_id", sa.Uuid(), nullable=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_create_groups_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_create_groups")),
        sa.UniqueConstraint("marker", name=op.f("uq_create_groups_marker")),
    )
    with op.batch_alter_table("create_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_create_groups_batch_id"), ["batch_id"], unique=False)
    with op.batch_alter_table("server_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("group_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cloud_name", sa.String(length=63), nullable=True))
        batch_op.create_index(batch_op.f("ix_server_requests_group_id"), ["group_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_server_requests_group_id_create_groups"),
            "create_groups",
            ["group_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("server_requests", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_server_requests_group_id_create_groups"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_server_requests_group_id"))
        batch_op.drop_column("cloud_name")
        batch_op.drop_column("group_index")
        batch_op.drop_column("group_id")
    with op.batch_alter_table("create_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_create_groups_batch_id"))
    op.drop_table("create_groups")
