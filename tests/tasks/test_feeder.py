"""The batch feeder's decisions: it sends only the creates the quota admits, each with its slot.

Against a migrated database (both backends) and the real limiter on the session's Redis. The
chains the feeder starts are caught on their way to the broker (no worker runs them): the rows,
the caught messages and the limiter's window are what is checked.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from celery.canvas import Signature
from limits import parse
from sqlalchemy import event, select, update

from models.base import utcnow
from models.records import Batch, BatchSource, ServerRequest
from models.spec import parse_batch
from models.states import RequestState, Step
from tasks import batch_dispatch, group_create
from tasks.batch_dispatch import Feed, dispatch_chunk, feed
from tasks.control import cancel, retry, stalled_request_ids
from tasks.intake import submit
from tests.factories import batch, server
from worker.limiter import GlobalLimiter
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings

S = RequestState


@pytest.fixture
def sessions(database, redis_url):
    return database.sessions


@pytest.fixture
def quota(redis_url):
    """A limiter whose create class admits 2 calls a minute: what the feeder reads and takes."""
    limiter = GlobalLimiter(redis_url, {"create": parse("2/minute")})
    limiter.clear()
    yield limiter
    limiter.clear()


@pytest.fixture
def sent(monkeypatch):
    """The chains started, as (request id, task, slot), instead of messages to the broker."""
    caught = []

    def record(signature: Signature, *_args, **_options):
        if "request_id" in signature.kwargs:  # not the batch's own control messages
            kwargs = signature.kwargs
            caught.append((kwargs["request_id"], signature.task, kwargs.get("slot")))

    monkeypatch.setattr(Signature, "apply_async", record)
    return caught


def stored_batch(sessions, size: int) -> uuid.UUID:
    spec = parse_batch(batch(*(server(name=f"node-{n}") for n in range(size))))
    return submit(sessions, spec, BatchSource.API).batch_id


def request_ids(sessions, batch_id: uuid.UUID) -> list[str]:
    with sessions() as session:
        query = select(ServerRequest.id).where(ServerRequest.batch_id == batch_id)
        return [str(request_id) for request_id in session.scalars(query.order_by("position"))]


def rows(sessions, batch_id: uuid.UUID) -> list[tuple[RequestState, int]]:
    with sessions() as session:
        query = select(ServerRequest.state, ServerRequest.fence).where(
            ServerRequest.batch_id == batch_id
        )
        return [tuple(row) for row in session.execute(query.order_by(ServerRequest.position))]


def watermark(sessions, batch_id: uuid.UUID) -> int:
    with sessions() as session:
        return session.get(Batch, batch_id).dispatched_position


class Statements:
    """SQL statements sent on the engine while in the block."""

    def __init__(self, sessions) -> None:
        self.engine, self.seen = sessions.kw["bind"], []

    def _record(self, *args) -> None:
        self.seen.append(args[2])

    def __enter__(self) -> list[str]:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self.seen

    def __exit__(self, *_exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def test_the_feeder_sends_only_the_creates_the_quota_admits_each_with_its_slot(
    sessions, quota, sent
):
    batch_id = stored_batch(sessions, 5)

    fed = feed(sessions, quota, batch_id, 0, size=500)

    # Both slots are held by creates not answered yet: when one frees is unknown, so the next
    # run comes after a slot's share of the window (60 s / 2).
    assert fed.position == 2 and fed.countdown == 30
    ids = request_ids(sessions, batch_id)
    assert [(request_id, task) for request_id, task, _slot in sent] == [
        (ids[0], "bms.create_server"),
        (ids[1], "bms.create_server"),
    ]
    slots = [slot for _id, _task, slot in sent]
    assert None not in slots and len(set(slots)) == 2
    assert quota.capacity("create").free == 0  # the slots are taken: the creates are theirs
    assert [fence for _state, fence in rows(sessions, batch_id)] == [1, 1, 0, 0, 0]
    assert watermark(sessions, batch_id) == 2


def test_a_feeder_without_quota_costs_one_redis_call_and_no_sql(sessions, quota, sent):
    batch_id = stored_batch(sessions, 5)
    first = feed(sessions, quota, batch_id, 0, size=500)

    with Statements(sessions) as statements:
        again = feed(sessions, quota, batch_id, first.position, size=500)

    assert statements == []
    assert again.position == 2 and again.countdown > 25
    assert len(sent) == 2


def test_a_feeder_message_delivered_twice_dispatches_nothing_twice(sessions, quota, sent):
    batch_id = stored_batch(sessions, 5)
    assert feed(sessions, quota, batch_id, 0, size=500).position == 2
    quota.clear()  # a new window: the copy would find capacity

    # The copy of the first message (it expects watermark 0): it stops, and takes no slot.
    assert feed(sessions, quota, batch_id, 0, size=500) is None

    assert len(sent) == 2
    assert quota.capacity("create").free == 2
    assert [fence for _state, fence in rows(sessions, batch_id)] == [1, 1, 0, 0, 0]


def test_two_copies_running_side_by_side_send_the_chunk_once_and_give_back_the_slots(
    sessions, quota, sent, monkeypatch, redis_url
):
    batch_id = stored_batch(sessions, 5)
    quota_of_six = GlobalLimiter(redis_url, {"create": parse("6/minute")})
    reserve = batch_dispatch._reserve
    copies = []

    def the_other_copy_moves_first(limiter, chunk, ahead):
        if not copies:  # this copy read watermark 0; the other one reads it too and goes on
            copies.append(None)
            copies[0] = dispatch_chunk(sessions, batch_id, 0, 2, quota_of_six)
        return reserve(limiter, chunk, ahead)

    monkeypatch.setattr(batch_dispatch, "_reserve", the_other_copy_moves_first)

    assert dispatch_chunk(sessions, batch_id, 0, 2, quota_of_six) is None  # lost the CAS

    assert copies == [Feed(2, 0.0)]
    assert len(sent) == 2  # the chunk went out once, with the slots of the copy that moved
    assert quota_of_six.capacity("create").free == 4  # the loser's two slots are back
    assert watermark(sessions, batch_id) == 2


def test_a_feeder_killed_mid_chunk_is_resumed_by_the_reconcilers(
    sessions, redis_url, sent, monkeypatch
):
    limiter = GlobalLimiter(redis_url, {"create": parse("3/minute")})
    limiter.clear()
    batch_id = stored_batch(sessions, 5)
    ids = request_ids(sessions, batch_id)

    def killed_after_two(signature, *_args, **_options):
        if len(sent) == 2:
            raise SystemExit("worker killed")  # not an error the feeder handles
        sent.append(signature.kwargs["request_id"])

    monkeypatch.setattr(Signature, "apply_async", killed_after_two)
    with pytest.raises(SystemExit):
        feed(sessions, limiter, batch_id, 0, size=500)
    monkeypatch.undo()

    assert watermark(sessions, batch_id) == 3  # moved before sending; the third never went
    with sessions() as session:
        stalled = {str(request_id) for request_id in stalled_request_ids(session, 0)}
    # Below the watermark: the request reconciler restarts them; past it: waiting, not stalled.
    assert stalled == set(ids[:3])

    settings = Settings(redis_url=redis_url, dispatch_chunk=500, dispatch_stall_seconds=1e-6)
    use_runtime(Runtime(settings, sessions, limiter=limiter, client=None))
    resumed = []
    monkeypatch.setattr(batch_dispatch, "send", lambda *args, **_kw: resumed.append(args) or True)
    try:
        assert batch_dispatch.reconcile_batches() == 1
        assert resumed == [(batch_id, None, "bms.dispatch_batch")]  # from where it is
        limiter.clear()
        monkeypatch.undo()
        sent.clear()
        monkeypatch.setattr(Signature, "apply_async", lambda sig, *a, **k: sent.append(sig))
        assert batch_dispatch.dispatch_batch(batch_id=str(batch_id), position=None) is None
    finally:
        use_runtime(None)
        limiter.clear()
    assert [sig.kwargs["request_id"] for sig in sent] == ids[3:]
    assert watermark(sessions, batch_id) == 5


def test_cancelled_while_waiting_rows_end_cancelled_without_a_chain_or_a_slot(
    sessions, quota, sent
):
    batch_id = stored_batch(sessions, 4)
    assert feed(sessions, quota, batch_id, 0, size=500).position == 2
    ids = request_ids(sessions, batch_id)

    cancel(sessions, [uuid.UUID(request_id) for request_id in ids])
    quota.clear()

    assert feed(sessions, quota, batch_id, 2, size=500) is None  # past them, to the end

    assert watermark(sessions, batch_id) == 4
    assert len(sent) == 2  # only the two sent before the cancel
    assert quota.capacity("create").free == 2  # no slot spent on a cancelled row
    assert rows(sessions, batch_id)[2:] == [(S.CANCELLED, 0), (S.CANCELLED, 0)]
    with sessions() as session:
        assert set(stalled_request_ids(session, 0)).isdisjoint(ids[2:])


def test_a_run_reads_the_rows_its_slots_need_not_the_whole_chunk(
    sessions, quota, sent, monkeypatch
):
    batch_id = stored_batch(sessions, 40)
    ids = request_ids(sessions, batch_id)
    # Cancelled rows cost no slot: the run reads on past them, page after page.
    cancel(sessions, [uuid.UUID(request_id) for request_id in ids[3:10]])
    read = []
    chunk = batch_dispatch._chunk
    monkeypatch.setattr(
        batch_dispatch, "_chunk", lambda *args: read.extend(chunk(*args)) or chunk(*args)
    )

    first = feed(sessions, quota, batch_id, 0, size=500)
    quota.clear()
    second = feed(sessions, quota, batch_id, first.position, size=500)

    # Each run has 2 slots: before, each read every row to the chunk's end (40 and 38). The
    # second reads pages of 3, 6 and 12 rows, until it holds a call more than its slots.
    assert [row.position for row in read] == [0, 1, 2] + list(range(2, 23))
    assert [request_id for request_id, _task, _slot in sent] == [ids[0], ids[1], ids[2], ids[10]]
    assert (first.position, second.position) == (2, 11)


def test_retry_of_a_failed_request_is_sent_at_once_and_takes_its_own_slot(sessions, quota, sent):
    batch_id = stored_batch(sessions, 3)
    feed(sessions, quota, batch_id, 0, size=500)
    first = uuid.UUID(request_ids(sessions, batch_id)[0])
    with sessions() as session:
        session.execute(
            update(ServerRequest)
            .where(ServerRequest.id == first)
            .values(state=S.FAILED, failed_step=Step.CREATE, updated_at=utcnow())
        )
        session.commit()
    sent.clear()

    assert retry(sessions, [first]) == [first]

    # Not through the feeder (its batch is being fed): the create holds a slot when it runs.
    assert sent == [(str(first), "bms.create_server", None)]
    assert rows(sessions, batch_id)[0][0] is S.CREATING


def test_several_batches_share_the_quota_each_slot_to_one_of_them(sessions, quota, sent):
    first, second = stored_batch(sessions, 3), stored_batch(sessions, 3)

    fed = [feed(sessions, quota, batch_id, 0, size=500) for batch_id in (first, second)]
    fed.append(feed(sessions, quota, first, fed[0].position, size=500))

    assert [f.position for f in fed] == [2, 0, 2]
    assert len(sent) == 2 and len({slot for _id, _task, slot in sent}) == 2
    assert all(f.countdown >= 30 for f in fed)  # none comes back before a slot can free


def test_a_resume_reads_the_watermark_then_waits_without_more_sql(sessions, quota, sent):
    batch_id = stored_batch(sessions, 3)
    feed(sessions, quota, batch_id, 0, size=500)

    with Statements(sessions) as statements:
        resumed = feed(sessions, quota, batch_id, None, size=500)

    assert resumed.position == 2
    assert [s.split()[0] for s in statements if not s.startswith("BEGIN")] == ["SELECT"]


def test_a_count_group_costs_one_slot_and_only_its_first_member_is_sent(sessions, quota, sent):
    names = ["g-0000", "g-0001", "g-0002", "solo-a", "solo-b"]
    spec = parse_batch(batch(*(server(name=name) for name in names)))
    batch_id = submit(sessions, spec, BatchSource.API).batch_id
    ids = request_ids(sessions, batch_id)
    assert [str(i) for i in group_create.plan_batch(sessions, batch_id, 100)] == [ids[0]]

    fed = feed(sessions, quota, batch_id, 0, size=500)

    # The group's create (its first member's message) makes all three: one slot for it, the
    # other slot for solo-a; solo-b waits for the next slot.
    assert fed.position == 4
    assert [(request_id, task) for request_id, task, _slot in sent] == [
        (ids[0], "bms.create_group"),
        (ids[3], "bms.create_server"),
    ]
    assert None not in [slot for _id, _task, slot in sent]
    assert [fence for _state, fence in rows(sessions, batch_id)] == [1, 0, 0, 1, 0]


def test_slots_that_free_soon_are_booked_and_their_creates_sent_for_that_instant(
    sessions, quota, monkeypatch
):
    for _ in range(2):
        quota.acquire("create")()  # a full window of answered calls: both slots free in ~60 s
    caught = []

    def record(signature: Signature, *_args, **options):
        if "request_id" in signature.kwargs:
            caught.append((signature.kwargs["slot"], options))

    monkeypatch.setattr(Signature, "apply_async", record)
    batch_id = stored_batch(sessions, 3)

    fed = feed(sessions, quota, batch_id, 0, size=500, ahead=120)

    assert fed.position == 2  # the third would need an answer of these two first
    now = datetime.now(UTC)
    assert len(caught) == 2 and None not in [slot for slot, _options in caught]
    assert all(55 < (options["eta"] - now).total_seconds() <= 61 for _slot, options in caught)


def test_a_run_that_booked_all_it_could_comes_back_after_a_quarter_of_ahead(
    sessions, redis_url, sent
):
    fast = GlobalLimiter(redis_url, {"create": parse("20/second")})
    fast.clear()
    batch_id = stored_batch(sessions, 30)

    limited_by_chunk = feed(sessions, fast, batch_id, 0, size=5, ahead=2.0)
    all_booked = feed(sessions, fast, batch_id, limited_by_chunk.position, size=500, ahead=2.0)

    # Slots were left: at once. Every slot taken by calls not answered yet: the limiter says
    # 0.05 s (a slot's share of the window), and a run every 0.05 s cost a task run, its
    # statements and a publish per two or three creates.
    assert (limited_by_chunk.position, limited_by_chunk.countdown) == (5, 0.0)
    assert (all_booked.position, all_booked.countdown) == (20, 0.5)
    assert len(sent) == 20
    fast.clear()


def test_booked_creates_are_sent_a_lead_ahead_of_their_slots_instant(sessions, quota, monkeypatch):
    for _ in range(2):
        quota.acquire("create")()  # a full window of answered calls: both slots free in ~60 s
    for _ in range(10):
        quota.record_pickup("create", 0.08)  # creates started 0.08 s after their ETA lately
    caught = []

    def record(signature: Signature, *_args, **options):
        if "request_id" in signature.kwargs:
            caught.append((signature.kwargs["slot"], options["eta"].timestamp()))

    monkeypatch.setattr(Signature, "apply_async", record)
    batch_id = stored_batch(sessions, 2)

    feed(sessions, quota, batch_id, 0, size=500, ahead=120)

    assert len(caught) == 2
    for slot, eta in caught:
        instant = quota._redis.zscore("bms:limit:create", slot) / 1000  # the slot's own
        # Sent ahead of it by the lead (the run waits for the instant before its call).
        assert instant - 0.08 - 0.05 <= eta < instant - 0.04
