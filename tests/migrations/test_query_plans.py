"""Every list query and both reconcilers' queries have an index to walk (EXPLAIN, PostgreSQL).

The queries are the code's own: each is run once against a small migrated database and caught
on its way to the driver, then explained with the same parameters. Sequential scans are turned
off for the explanation, so that the plan shows whether an index *can* serve the query (on a
handful of rows the planner would rightly prefer a scan); the expected index must be in it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from api import queries
from models.records import BatchSource
from models.spec import parse_batch
from tasks.batch_dispatch import stalled_batch_ids
from tasks.control import stalled_request_ids
from tasks.group_create import silent_group_ids
from tasks.intake import _existing, store_batch
from tests.factories import batch, server

pytestmark = pytest.mark.postgres


@contextmanager
def caught(engine) -> Iterator[list[tuple[str, object]]]:
    statements: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plan_of(database, statement: str, parameters) -> dict:
    with database.engine.connect() as connection:
        connection.execute(text("SET enable_seqscan = off"))
        raw = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        (plan,) = raw.scalar()
    return plan if isinstance(plan, dict) else json.loads(plan)


def nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.fixture
def stored(database, redis_url) -> tuple[uuid.UUID, uuid.UUID]:
    """A batch with two requests (one with a volume) and the id of its first request."""
    if database.backend != "postgresql":
        pytest.skip("query plans are checked on PostgreSQL")
    body = batch(
        server(name="db", attach_volumes=[{"volume_id": "e5e5e5e5-0000-4000-8000-000000000001"}]),
        server(name="web"),
    )
    with database.sessions() as session:
        submitted = store_batch(session, parse_batch(body), BatchSource.API, "plan-key")
        session.commit()
    return submitted.batch_id, submitted.request_ids[0]


QUERIES: dict[str, tuple[Callable, list[str]]] = {
    # name: (what runs the query, one index per statement it sends; None: any index)
    "reconciler": (
        lambda session, _ids: stalled_request_ids(session, 600),
        ["ix_server_requests_watched_updated_at"],
    ),
    "group reconciler": (
        lambda session, _ids: silent_group_ids(session, 600),
        ["ix_create_groups_open_updated_at"],
    ),
    "batch reconciler": (
        lambda session, _ids: stalled_batch_ids(session, 60),
        ["ix_batches_undispatched_updated_at"],
    ),
    "batch list": (
        lambda session, _ids: queries.batch_page(session, 50, 0),
        ["ix_batches_created_at_id", "ix_batch_state_counts_batch_id_state_n", None],
    ),
    "batch page": (
        lambda session, ids: queries.batch_detail(session, ids[0], 500, 0),
        [
            "pk_batches",
            "ix_batch_state_counts_batch_id_state_n",
            "ix_server_requests_batch_id_position",
        ],
    ),
    "batch ids (cancel, retry)": (
        lambda session, ids: queries.batch_request_ids(session, ids[0]),
        ["pk_batches", "ix_server_requests_batch_id_position"],
    ),
    "request detail": (
        lambda session, ids: queries.request_detail(session, ids[1]),
        [
            "pk_server_requests",
            "ix_volume_attachments_request_id_position",
            "ix_events_request_id_id",
        ],
    ),
    "idempotency key": (
        lambda session, _ids: _existing(session, "plan-key"),
        ["uq_batches_idempotency_key", "ix_server_requests_batch_id_position"],
    ),
}


@pytest.mark.parametrize("name", QUERIES)
def test_the_query_walks_its_index(database, stored, name):
    run, expected = QUERIES[name]
    with database.sessions() as session, caught(database.engine) as statements:
        run(session, stored)

    assert len(statements) == len(expected), [s for s, _p in statements]
    indexes_used = []
    for statement, parameters in statements:
        plan = plan_of(database, statement, parameters)["Plan"]
        scans = [node for node in nodes(plan) if "Scan" in node["Node Type"]]
        assert scans, plan
        assert not [n for n in scans if n["Node Type"] == "Seq Scan"], (statement, plan)
        indexes_used.append({n.get("Index Name") for n in scans})
    # Matched one statement each, in any order: SQLAlchemy emits the selectin loads of one
    # query (a request's attachments and events) in an order it does not promise.
    for index in (name for name in expected if name is not None):
        match = next((used for used in indexes_used if index in used), None)
        assert match is not None, (index, indexes_used)
        indexes_used.remove(match)
