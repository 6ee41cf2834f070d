"""batch state counts

Revision ID: 4cf8d9e765e9
Revises: b7c1f0e2a9d4
Create Date: 2026-11-27 22:30:00.000000

Requests per state of each batch, kept by triggers on ``server_requests`` in the transaction
of each change (``models.counts``): ``GET /v1/batches`` sums a few rows per batch instead of
counting every request. The table starts with the counts of the requests already stored. On
PostgreSQL an INSERT or DELETE is counted per statement (one grouped insert for a 10,000-row
``COPY``), an UPDATE per row whose state changes (no trigger runs for the others); SQLite has
only row triggers.

Workers of the previous release keep working: the triggers count their changes too.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4cf8d9e765e9"
down_revision: str | None = "b7c1f0e2a9d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: PostgreSQL: an INSERT or DELETE per statement, from its transition table (one grouped row
#: per state for a 10,000-row COPY).
POSTGRESQL_FUNCTIONS = {
    "bms_count_inserted": """
        INSERT INTO batch_state_counts (batch_id, state, n)
        SELECT batch_id, state, count(*) FROM new_rows GROUP BY batch_id, state;
    """,
    # Per row, and only for a row whose state changes (the trigger's WHEN): most UPDATEs of a
    # request (its token, job, marker) run no trigger at all.
    "bms_count_updated": """
        INSERT INTO batch_state_counts (batch_id, state, n)
        VALUES (OLD.batch_id, OLD.state, -1), (NEW.batch_id, NEW.state, 1);
    """,
    "bms_count_deleted": """
        INSERT INTO batch_state_counts (batch_id, state, n)
        SELECT batch_id, state, -count(*) FROM old_rows GROUP BY batch_id, state;
    """,
}
POSTGRESQL_TRIGGERS = {
    "trg_server_requests_count_insert": (
        "AFTER INSERT ON server_requests REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
        "bms_count_inserted",
    ),
    "trg_server_requests_count_update": (
        "AFTER UPDATE OF state, batch_id ON server_requests FOR EACH ROW "
        "WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.batch_id IS DISTINCT FROM NEW.batch_id)",
        "bms_count_updated",
    ),
    "trg_server_requests_count_delete": (
        "AFTER DELETE ON server_requests REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
        "bms_count_deleted",
    ),
}
SQLITE_TRIGGERS = {
    "trg_server_requests_count_insert": """
        AFTER INSERT ON server_requests BEGIN
            INSERT INTO batch_state_counts (batch_id, state, n)
            VALUES (NEW.batch_id, NEW.state, 1);
        END
    """,
    "trg_server_requests_count_update": """
        AFTER UPDATE OF state, batch_id ON server_requests
        WHEN OLD.state IS NOT NEW.state OR OLD.batch_id IS NOT NEW.batch_id BEGIN
            INSERT INTO batch_state_counts (batch_id, state, n)
            VALUES (OLD.batch_id, OLD.state, -1), (NEW.batch_id, NEW.state, 1);
        END
    """,
    "trg_server_requests_count_delete": """
        AFTER DELETE ON server_requests BEGIN
            INSERT INTO batch_state_counts (batch_id, state, n)
            VALUES (OLD.batch_id, OLD.state, -1);
        END
    """,
}


def upgrade() -> None:
    op.create_table(
        "batch_state_counts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "PENDING",
                "CREATING",
                "BUILDING",
                "ATTACHING",
                "TAGGING",
                "ACTIVE",
                "FAILED",
                "CANCELLED",
                "TEARING_DOWN",
                "TORN_DOWN",
                name="requeststate",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_state_counts")),
    )
    with op.batch_alter_table("batch_state_counts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_batch_state_counts_batch_id_state_n"),
            ["batch_id", "state", "n"],
            unique=False,
        )
    # The requests already stored, then their changes from here on: one transaction (the
    # migration's), so no change falls between the two on PostgreSQL.
    op.execute(
        "INSERT INTO batch_state_counts (batch_id, state, n) "
        "SELECT batch_id, state, count(*) FROM server_requests GROUP BY batch_id, state"
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, body in POSTGRESQL_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body} RETURN NULL; END $$"
            )
        for name, (when, function) in POSTGRESQL_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION {function}()")
    else:
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in POSTGRESQL_TRIGGERS:
        op.execute(f"DROP TRIGGER {name}" + (" ON server_requests" if postgresql else ""))
    if postgresql:
        for name in POSTGRESQL_FUNCTIONS:
            op.execute(f"DROP FUNCTION {name}()")
    with op.batch_alter_table("batch_state_counts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_state_counts_batch_id_state_n"))
    op.drop_table("batch_state_counts")
