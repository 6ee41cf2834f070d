"""Intake: a batch stored in one transaction of a fixed number of statements, whatever its size.

Against a migrated database (both backends); the ``bms.dispatch_batch`` message goes to the
session's Redis, where no worker takes it: the rows are what is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select

from models.records import (
    AttachmentState,
    Batch,
    BatchSource,
    Event,
    ServerRequest,
    VolumeAttachment,
)
from models.spec import parse_batch
from models.states import RequestState
from tasks.intake import submit
from tests.factories import VALID_SERVER, batch, server


@pytest.fixture
def sessions(database, redis_url):
    return database.sessions


@contextmanager
def counted_statements(engine) -> Iterator[list[str]]:
    """Every statement sent to the database meanwhile (an executemany counts once)."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def servers_with_volumes(count: int) -> dict:
    """``count`` servers, each with two volumes to attach (so all four tables are written)."""
    return batch(
        *(
            server(
                name=f"node-{n}",
                attach_volumes=[
                    {"volume_id": f"e5e5e5e5-0000-4000-8000-{2 * n:012d}"},
                    {"volume_id": f"e5e5e5e5-0000-4000-8000-{2 * n + 1:012d}"},
                ],
            )
            for n in range(count)
        )
    )


def rows(sessions, model, **where) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return session.scalar(query)


@pytest.mark.parametrize("key", [None, "order-7"], ids=["no-key", "idempotency-key"])
def test_a_batch_is_stored_with_the_same_statements_whatever_its_size(database, sessions, key):
    counts = {}
    for size in (3, 300):
        spec = parse_batch(servers_with_volumes(size))
        with counted_statements(database.engine) as statements:
            submitted = submit(sessions, spec, BatchSource.API, f"{key}-{size}" if key else None)
        counts[size] = len(statements)
        assert submitted.total == size
        assert rows(sessions, ServerRequest, batch_id=submitted.batch_id) == size

    # One statement per table (and the key's lookup), none per request: the chains are sent
    # later, by bms.dispatch_batch.
    assert counts[300] == counts[3], counts
    assert counts[300] <= 6, counts


def test_a_stored_batch_has_every_row_and_its_watermark_at_zero(sessions):
    spec = parse_batch(servers_with_volumes(4))

    submitted = submit(sessions, spec, BatchSource.CLI)

    with sessions() as session:
        stored = session.get(Batch, submitted.batch_id)
        assert (stored.request_count, stored.dispatched_position) == (4, 0)
        assert stored.source is BatchSource.CLI
        requests = list(
            session.scalars(
                select(ServerRequest)
                .where(ServerRequest.batch_id == submitted.batch_id)
                .order_by(ServerRequest.position)
            )
        )
    assert [r.id for r in requests] == submitted.request_ids
    assert [r.name for r in requests] == submitted.names == [f"node-{n}" for n in range(4)]
    assert [r.position for r in requests] == [0, 1, 2, 3]
    assert {(r.state, r.attempt, r.fence) for r in requests} == {(RequestState.PENDING, 0, 0)}
    # The spec is what ExpandedServer.model_dump() always gave.
    (first,) = [s for s in spec.expand() if s.name == "node-0"]
    assert requests[0].spec == first.model_dump()
    assert rows(sessions, VolumeAttachment) == 8
    with sessions() as session:
        events = session.execute(
            select(Event.request_id, Event.from_state, Event.to_state, Event.detail).order_by(
                Event.id
            )
        ).all()
    assert [e.request_id for e in events] == submitted.request_ids
    assert {(e.from_state, e.to_state, e.detail) for e in events} == {
        (None, RequestState.PENDING, "submitted via cli")
    }


def test_a_replayed_key_answers_the_first_batch_in_order(sessions):
    first = submit(sessions, parse_batch(servers_with_volumes(3)), BatchSource.API, "k-1")

    # The same body (another body under the key is a conflict: tests/tasks/test_intake_conflict)
    again = submit(sessions, parse_batch(servers_with_volumes(3)), BatchSource.API, "k-1")

    assert not again.created
    assert (again.batch_id, again.request_ids, again.names) == (
        first.batch_id,
        first.request_ids,
        first.names,
    )
    assert rows(sessions, Batch) == 1


def test_every_request_of_a_count_stores_the_spec_expand_gives(sessions):
    # The servers of one count share one serialized spec with each one's name put in: each
    # must still read back as the spec of its own server, names, tags and nested values.
    spec = parse_batch(
        batch(
            server(
                name="web",
                count=3,
                tags=["rack-a", "web"],
                metadata={**VALID_SERVER["metadata"], "note": "web-0001 \u00e9"},
            ),
            server(
                name="db",
                attach_volumes=[
                    {"volume_id": "e5e5e5e5-0000-4000-8000-000000000001", "device": "/dev/sdb"}
                ],
            ),
        )
    )

    submitted = submit(sessions, spec, BatchSource.API)

    with sessions() as session:
        stored = list(
            session.scalars(
                select(ServerRequest)
                .where(ServerRequest.batch_id == submitted.batch_id)
                .order_by(ServerRequest.position)
            )
        )
        attachments = session.execute(
            select(
                VolumeAttachment.request_id,
                VolumeAttachment.position,
                VolumeAttachment.volume_id,
                VolumeAttachment.device,
                VolumeAttachment.state,
                VolumeAttachment.attempt,
            )
        ).all()
    expected = [s.model_dump() for s in spec.expand()]
    assert [r.spec for r in stored] == expected
    assert [r.name for r in stored] == ["web-0000", "web-0001", "web-0002", "db"]
    assert [r.spec["create_body"]["name"] for r in stored] == [r.name for r in stored]
    assert {
        (r.restarts, r.create_serial, r.teardown_attempts, r.cleanup_attempts) for r in stored
    } == {(0, 0, 0, 0)}
    assert [tuple(a) for a in attachments] == [
        (stored[3].id, 0, "e5e5e5e5-0000-4000-8000-000000000001", "/dev/sdb",
         AttachmentState.PENDING, 0)
    ]  # fmt: skip
