"""Bulk inserts of many rows in the caller's transaction: ``COPY`` on PostgreSQL, one
executemany elsewhere.

The intake stores up to ``BMS_MAX_BATCH_SERVERS`` requests (and their first events) in one
transaction. On PostgreSQL, psycopg's pipelined executemany of 10,000 rows spent most of a
10,000-server ``POST`` adapting parameters and running one INSERT per row; ``COPY ... FROM
STDIN`` streams the same rows as one statement (binary format). SQLite has no ``COPY``: there
the rows go through SQLAlchemy's executemany, as before.

Rows are tuples in the order of ``columns``, values as the driver takes them, except that a
JSON column's value is its JSON text (serialized once by the caller, who may share it between
rows) and an enum's is its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql
from sqlalchemy import JSON, Connection, Table, Text, bindparam, insert
from sqlalchemy.orm import Session


def insert_rows(
    session: Session, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` into ``table`` in ``session``'s transaction (nothing if there are none).

    The session's pending ORM changes are flushed first, so that they precede these rows as
    they would precede any statement the session runs.
    """
    if not rows:
        return
    session.flush()
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy(connection, table, columns, rows)
        return
    # JSON text bound as text: the column's own type would serialize it a second time.
    values = {
        name: bindparam(name, type_=Text() if isinstance(column.type, JSON) else column.type)
        for name, column in ((name, table.c[name]) for name in columns)
    }
    session.execute(
        insert(table).values(values), [dict(zip(columns, row, strict=True)) for row in rows]
    )


def _copy(connection: Connection, table: Table, columns: Sequence[str], rows) -> None:
    # Binary: half the client's CPU of the text format, and less parsing for the server.
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    # The binary format wants each column's type: its name as the dialect renders it
    # ("VARCHAR(63)" -> "varchar"), which psycopg knows; a JSON column's binary form is its
    # text, sent as text (psycopg's json dumper would serialize the text once more).
    types = [_copy_type(table.c[name].type, connection) for name in columns]
    cursor = connection.connection.driver_connection.cursor()
    with cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _copy_type(column_type, connection: Connection) -> str:
    if isinstance(column_type, JSON):
        return "text"
    return column_type.compile(dialect=connection.dialect).split("(")[0].lower()
