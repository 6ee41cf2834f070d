"""Every list query and the reconcilers' queries have an index to walk (EXPLAIN, PostgreSQL).

The queries are the code's own: each is run once against a small migrated database and caught
on its way to the driver, then explained with the same parameters. Sequential scans are turned
off for the explanation, so that the plan shows whether an index *can* serve the query (on a
handful of rows the planner would rightly prefer a scan); the expected index must be in it.
The request reconciler's plan is checked apart, as the planner picks it on a table shaped like
the 100,000-request bench's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select, text, update

from api import queries
from models.records import Batch, BatchSource, ServerRequest
from models.spec import parse_batch
from models.states import RequestState
from tasks.batch_dispatch import stalled_batch_ids
from tasks.control import STALLED_LIMIT, stalled_request_ids
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


#: The reconciler's plan, on a table shaped like the 100k-request bench's: started requests
#: beyond the query's limit, a few PENDING ones below the watermark, many waiting past it.
STARTED, SENT, WAITING = 3000, 200, 4800


@pytest.fixture
def reconciler_table(database, redis_url) -> set[uuid.UUID]:
    """The ids the reconciler may return (started, or PENDING below the watermark)."""
    if database.backend != "postgresql":
        pytest.skip("query plans are checked on PostgreSQL")
    total = STARTED + SENT + WAITING
    body = batch(*(server(name=f"r{i:02d}", count=100) for i in range(total // 100)))
    with database.sessions() as session:
        store_batch(session, parse_batch(body), BatchSource.API)
        session.commit()
    requests, batches = ServerRequest.__table__, Batch.__table__
    long_ago = text("now() - interval '1 hour'")
    with database.engine.begin() as connection:
        connection.execute(
            update(requests)
            .where(requests.c.position < STARTED)
            .values(state=RequestState.CREATING)
        )
        connection.execute(update(requests).values(updated_at=long_ago))
        connection.execute(
            update(batches).values(dispatched_position=STARTED + SENT, updated_at=long_ago)
        )
        stalled = connection.execute(
            select(requests.c.id).where(requests.c.position < STARTED + SENT)
        )
        ids = set(stalled.scalars())
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("ANALYZE batches, server_requests"))
    return ids


def test_the_reconciler_walks_started_requests_in_order_and_pending_ones_by_batch(
    database, reconciler_table
):
    # Waiting PENDING requests (past their batch's watermark) can be most of the table: the
    # query must not walk them, nor sort the started ones it takes (the 100k-request bench:
    # 9,000 waiting ones walked, each with a look at its batch, 15-66 ms to find none). The
    # batches are walked, one look-up in the PENDING index each.
    with database.sessions() as session, caught(database.engine) as statements:
        found = stalled_request_ids(session, 600)
    assert len(found) == STALLED_LIMIT and set(found) <= reconciler_table
    ((statement, parameters),) = statements
    with database.engine.connect() as connection:  # the plan the planner picks, as it is
        raw = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        (plan,) = raw.scalar()
    plan = plan["Plan"]
    started = only_node(plan, "ix_server_requests_started_updated_at")
    assert started["Node Type"] == "Index Scan" and "updated_at <" in started["Index Cond"]
    assert not [n for n in path_to(plan, started) if n["Node Type"] == "Sort"], plan
    pending = only_node(plan, "ix_server_requests_pending_batch_id_position")
    # Looked up batch by batch, below its watermark: not a walk of every PENDING request.
    assert "batch_id = batches.id" in pending["Index Cond"], pending
    assert '"position" < batches.dispatched_position' in pending["Index Cond"], pending
    scanned_requests = [n for n in nodes(plan) if n.get("Relation Name") == "server_requests"]
    assert not [n for n in scanned_requests if "Index" not in n["Node Type"]], plan


def only_node(plan: dict, index: str) -> dict:
    (node,) = [n for n in nodes(plan) if n.get("Index Name") == index]
    return node


def path_to(plan: dict, target: dict) -> list[dict]:
    """The nodes from the plan's root down to ``target``, both included."""
    if plan is target:
        return [plan]
    for child in plan.get("Plans", []):
        path = path_to(child, target)
        if path:
            return [plan, *path]
    return []
