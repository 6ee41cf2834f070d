"""Requests per state kept in ``batch_state_counts`` by the database (``models.counts``).

Checked against a count of the requests themselves, on both backends: after intake (COPY on
PostgreSQL), transitions, a bulk UPDATE and a delete, with compaction; with many sessions
moving requests of one batch at once while others read and compact; and folded by the beat's
``fold_piled`` in bounded chunks, alone and while requests move and reads compact.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from models import counts
from models.counts import (
    BatchStateCount,
    compact,
    fold_chunk,
    fold_piled,
    piled_batches,
    state_counts,
)
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


def rows_of(database, batch_id) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).where(BatchStateCount.batch_id == batch_id))


def bulk_cancel(database, batch_id) -> None:
    """One UPDATE of every PENDING request: two counter rows each."""
    with database.sessions() as session:
        session.execute(
            update(ServerRequest)
            .where(ServerRequest.batch_id == batch_id, ServerRequest.state == S.PENDING)
            .values(state=S.CANCELLED)
        )
        session.commit()


def test_the_fold_takes_a_bounded_chunk_per_transaction_and_keeps_counts_exact(database):
    batch_id = stored(database, 60)
    bulk_cancel(database, batch_id)
    before = rows_of(database, batch_id)
    # The intake's +60 (one row per request on SQLite), then -1 and +1 per request.
    assert before in (121, 180)

    with database.sessions() as session:
        assert fold_chunk(session, batch_id, 25) == 25
        session.commit()
    # The 25 rows folded into one per state they held (PENDING and CANCELLED at most).
    assert before - 25 < rows_of(database, batch_id) <= before - 25 + 2
    assert kept(database, batch_id) == {**dict.fromkeys(S, 0), S.CANCELLED: 60}

    # Two transactions of 10 rows, then the run stops: the next one goes on.
    assert fold_piled(database.sessions, chunk=10, max_chunks=2) == 20


def test_the_fold_leaves_one_row_per_state_of_every_batch(database):
    ids = [stored(database, size) for size in (40, 7, 1)]
    bulk_cancel(database, ids[0])
    first, *_ = request_ids(database, ids[1])
    move(database, first, S.CREATING, S.BUILDING)
    with database.sessions() as session:
        assert set(piled_batches(session, 10)) == {ids[0], ids[1]}  # the third: one row

    folded = fold_piled(database.sessions, chunk=10, max_chunks=1000)

    assert folded >= 81 + 5  # at least every row of the two piled batches
    with database.sessions() as session:
        assert piled_batches(session, 10) == []
        for batch_id in ids:
            assert state_counts(session, [batch_id])[batch_id] == live(session, batch_id)
    assert [rows_of(database, batch_id) for batch_id in ids] == [1, 2, 1]
    assert fold_piled(database.sessions, chunk=10, max_chunks=1000) == 0


def test_counts_stay_exact_while_the_fold_races_writers_and_compacting_readers(
    database, monkeypatch
):
    monkeypatch.setattr(counts, "COMPACT_ABOVE", 0)  # every read compacts too
    batch_id = stored(database, 24)
    ids = request_ids(database, batch_id)
    path = (S.CREATING, S.BUILDING, S.TAGGING, S.ACTIVE)
    errors: list[BaseException] = []
    done = threading.Event()

    def guarded(work) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def mover(mine: list[uuid.UUID]) -> None:
        for request_id in mine:
            move(database, request_id, *path)

    def folder() -> None:
        while not done.is_set():
            fold_piled(database.sessions, chunk=3, max_chunks=50)

    def reader() -> None:
        while not done.is_set():
            with database.sessions() as session:
                state_counts(session, [batch_id])
                session.commit()

    movers = [
        threading.Thread(target=guarded, args=(lambda m=ids[n::3]: mover(m),)) for n in range(3)
    ]
    others = [threading.Thread(target=guarded, args=(work,)) for work in (folder, folder, reader)]
    for thread in others + movers:
        thread.start()
    for thread in movers:
        thread.join()
    done.set()
    for thread in others:
        thread.join()

    assert errors == []
    with database.sessions() as session:
        expected = live(session, batch_id)
        assert state_counts(session, [batch_id])[batch_id] == expected
    assert expected[S.ACTIVE] == 24
    fold_piled(database.sessions, chunk=3, max_chunks=1000)
    assert rows_of(database, batch_id) == 1
    assert kept(database, batch_id) == {**dict.fromkeys(S, 0), S.ACTIVE: 24}


def test_the_beat_task_folds_with_the_settings_chunk(database, redis_url):
    from tasks.counts import fold_counts
    from worker.runtime import Runtime, use_runtime
    from worker.settings import Settings

    batch_id = stored(database, 30)
    bulk_cancel(database, batch_id)
    settings = Settings(redis_url=redis_url, counts_fold_chunk=10)
    use_runtime(Runtime(settings, database.sessions, limiter=None, client=None))
    try:
        assert fold_counts() > 60
    finally:
        use_runtime(None)
    assert rows_of(database, batch_id) == 1
    assert kept(database, batch_id) == {**dict.fromkeys(S, 0), S.CANCELLED: 30}
