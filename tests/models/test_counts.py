"""Requests per state kept in ``batch_state_counts`` by the database (``models.counts``).

Checked against a count of the requests themselves, on both backends: after intake (COPY on
PostgreSQL), transitions, a bulk UPDATE and a delete, with compaction; and with many sessions
moving requests of one batch at once while others read and compact.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from models import counts
from models.counts import BatchStateCount, compact, state_counts
from models.records import BatchSource, Event, ServerRequest, transition
from models.spec import parse_batch
from models.states import RequestState
from tasks.intake import store_batch
from tests.factories import batch, server

S = RequestState


def stored(database, size: int) -> uuid.UUID:
    with database.sessions() as session:
        submitted = store_batch(
            session, parse_batch(batch(server(name="n", count=size))), BatchSource.API
        )
        session.commit()
    return submitted.batch_id


def live(session, batch_id) -> dict[RequestState, int]:
    """The counts from the requests themselves."""
    found = dict.fromkeys(RequestState, 0)
    rows = session.execute(
        select(ServerRequest.state, func.count())
        .where(ServerRequest.batch_id == batch_id)
        .group_by(ServerRequest.state)
    )
    for state, number in rows:
        found[state] = number
    return found


def kept(database, batch_id) -> dict[RequestState, int]:
    with database.sessions() as session:
        return state_counts(session, [batch_id])[batch_id]


def move(database, request_id, *states: RequestState) -> None:
    for to_state in states:
        with database.sessions() as session:
            request = session.scalars(
                select(ServerRequest).where(ServerRequest.id == request_id).with_for_update()
            ).one()
            transition(session, request, to_state)
            session.commit()


def request_ids(database, batch_id) -> list[uuid.UUID]:
    with database.sessions() as session:
        query = select(ServerRequest.id).where(ServerRequest.batch_id == batch_id)
        return list(session.scalars(query.order_by(ServerRequest.position)))


def test_counts_follow_intake_transitions_bulk_updates_and_deletes(database):
    batch_id = stored(database, 5)
    other = stored(database, 2)
    assert kept(database, batch_id) == {**dict.fromkeys(S, 0), S.PENDING: 5}

    first, second, *_ = request_ids(database, batch_id)
    move(database, first, S.CREATING, S.BUILDING, S.TAGGING, S.ACTIVE)
    move(database, second, S.CANCELLED)
    with database.sessions() as session:
        # A bulk UPDATE that changes some states and leaves others as they were.
        session.execute(
            update(ServerRequest)
            .where(ServerRequest.batch_id == batch_id, ServerRequest.state == S.PENDING)
            .values(state=S.FAILED)
        )
        session.execute(update(ServerRequest).values(fence=ServerRequest.fence + 1))
        session.execute(delete(Event).where(Event.request_id == first))
        session.execute(delete(ServerRequest).where(ServerRequest.id == first))
        session.commit()

    with database.sessions() as session:
        assert state_counts(session, [batch_id, other]) == {
            batch_id: live(session, batch_id),
            other: live(session, other),
        }
        assert live(session, batch_id)[S.FAILED] == 3
        compact(session, [batch_id, other])
        session.commit()
    with database.sessions() as session:
        assert state_counts(session, [batch_id])[batch_id] == live(session, batch_id)
        rows = session.scalar(select(func.count()).where(BatchStateCount.batch_id == batch_id))
    assert rows == 2  # one per state not at zero: CANCELLED 1, FAILED 3


def test_counts_stay_exact_while_requests_move_and_readers_compact(database, monkeypatch):
    monkeypatch.setattr(counts, "COMPACT_ABOVE", 0)  # every read compacts
    batch_id = stored(database, 24)
    ids = request_ids(database, batch_id)
    path = (S.CREATING, S.BUILDING, S.TAGGING, S.ACTIVE)
    errors: list[BaseException] = []
    done = threading.Event()

    def mover(mine: list[uuid.UUID]) -> None:
        try:
            for request_id in mine:
                move(database, request_id, *path)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                with database.sessions() as session:
                    state_counts(session, [batch_id])
                    session.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    movers = [threading.Thread(target=mover, args=(ids[n::4],)) for n in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers + movers:
        thread.start()
    for thread in movers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()

    assert errors == []
    with database.sessions() as session:
        expected = live(session, batch_id)
        assert state_counts(session, [batch_id])[batch_id] == expected
    assert expected[S.ACTIVE] == 24


@pytest.mark.parametrize("size", [1, 100])
def test_a_read_compacts_a_batch_whose_rows_piled_up(database, size):
    batch_id = stored(database, size)
    for request_id in request_ids(database, batch_id)[: counts.COMPACT_ABOVE]:
        move(database, request_id, S.CANCELLED)
    with database.sessions() as session:
        before = session.scalar(select(func.count()).where(BatchStateCount.batch_id == batch_id))
        state_counts(session, [batch_id])
        session.commit()
    with database.sessions() as session:
        after = session.scalar(select(func.count()).where(BatchStateCount.batch_id == batch_id))
        assert state_counts(session, [batch_id])[batch_id] == live(session, batch_id)
    if before > counts.COMPACT_ABOVE:
        assert after <= len(RequestState)
    else:
        assert after == before
