"""Migrations: up, down, up again, then no drift between the models and the revisions."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from models import migrate
from models.db import make_engine
from models.records import Base
from tests.fixtures.database import postgres_schema

#: Every table the models declare: the revisions must create exactly these.
TABLES = set(Base.metadata.tables)


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_the_revisions_have_exactly_one_head():
    # Two heads (a revision rebased onto an old parent) make `upgrade head` refuse to run.
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()


def test_upgrade_downgrade_upgrade_then_no_drift(database_url):
    engine = make_engine(database_url)
    try:
        migrate.upgrade(database_url)
        assert _tables(engine) == TABLES

        migrate.downgrade(database_url, "base")
        assert _tables(engine) == set()

        migrate.upgrade(database_url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            drift = compare_metadata(context, Base.metadata)
        assert drift == [], f"models and migrations differ: {drift}"
    finally:
        engine.dispose()


def test_indexes_for_the_dashboard_queries_exist(database_url):
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        indexed = {
            tuple(index["column_names"]) for index in inspect(engine).get_indexes("server_requests")
        }
    finally:
        engine.dispose()
    assert ("batch_id", "position") in indexed
    assert ("state", "updated_at") in indexed


def test_the_counting_triggers_exist_at_head(database_url):
    # models.counts relies on them; on SQLite a migration that rebuilds server_requests
    # (Alembic's batch mode) drops them silently: it must create them again.
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT DISTINCT tgname FROM pg_trigger JOIN pg_class c ON c.oid = tgrelid "
                    "WHERE c.relname = 'server_requests' AND c.relnamespace = "
                    "current_schema()::regnamespace AND NOT tgisinternal"
                )
            else:
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            names = set(connection.exec_driver_sql(query).scalars())
    finally:
        engine.dispose()
    assert {
        "trg_server_requests_count_insert",
        "trg_server_requests_count_update",
        "trg_server_requests_count_delete",
    } <= names


def _shape(engine) -> dict:
    """Everything the inspector sees of a schema, and the revision it is at."""
    inspector = inspect(engine)
    shape = {}
    for table in inspector.get_table_names():
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "foreign_keys": sorted(
                (f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            "checks": sorted(
                (c["name"] or "", str(c["sqltext"])) for c in inspector.get_check_constraints(table)
            ),
        }
    with engine.connect() as connection:
        shape["revision"] = MigrationContext.configure(connection).get_current_heads()
        shape["triggers"] = _triggers(connection)
    return shape


def _triggers(connection) -> list[tuple[str, str]]:
    """Every trigger of the schema, with its definition (which names its function)."""
    if connection.dialect.name == "postgresql":
        query = (
            "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c "
            "ON c.oid = tgrelid WHERE c.relnamespace = current_schema()::regnamespace "
            "AND NOT tgisinternal"
        )
        # The definition names the table with its schema, which differs between the two.
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
        rows = connection.exec_driver_sql(query)
        return sorted((name, definition.replace(f"{schema}.", "")) for name, definition in rows)
    query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
    return sorted(tuple(row) for row in connection.exec_driver_sql(query))


def test_the_database_fixture_copy_is_what_the_upgrade_makes(
    database_url, migrated_templates, tmp_path
):
    # The `database` fixture copies a template instead of upgrading each test's database: the
    # copy must be indistinguishable from an upgrade run on an empty database.
    migrate.upgrade(database_url)
    with ExitStack() as stack:
        if database_url.startswith("sqlite"):
            copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
        else:
            copy_url = stack.enter_context(
                contextmanager(postgres_schema)(os.environ["TEST_DATABASE_URL"])
            )
        migrated_templates.copy_into(copy_url)
        engines = [make_engine(database_url), make_engine(copy_url)]
        try:
            upgraded, copied = (_shape(engine) for engine in engines)
        finally:
            for engine in engines:
                engine.dispose()
    assert set(upgraded) - {"revision", "triggers"} == TABLES | {"alembic_version"}
    assert upgraded["triggers"]  # the counting triggers, compared below like the rest
    assert copied == upgraded
