"""Migrations: up, down, up again, then no drift between the models and the revisions."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from models import migrate
from models.db import make_engine
from models.records import Base

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
