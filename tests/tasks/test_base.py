"""The step wrapper and the row claim: ownership, real locks on both backends, bounded errors.

The race tests use real threads on a real database (SQLite and PostgreSQL): one thread holds
the row while another tries to take it, and the second must wait for the first to commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import event, update

from bms.client import ServerPage
from bms.exceptions import BadRequest, CloudConnectionError, Throttled
from models.base import as_utc, utcnow
from models.db import session_scope
from models.records import ServerRequest, transition
from models.states import RequestState, Step
from tasks import base
from tasks.attach import attach_volume
from tasks.base import Chain, StaleChain, advance, claim
from tasks.cleanup import delete_server
from tasks.control import cancel, stalled_request_ids
from tasks.create import create_server
from tasks.poll import poll_create_job
from tests.tasks.stepkit import job, next_task
from worker.limiter import LimiterUnreachable, NoCapacity

S = RequestState
#: How long the holder keeps the row while the other thread tries for it. The check is that
#: the other thread is *still* waiting when the holder lets go: a longer hold only makes a
#: broken lock more certain to show, never a working one fail.
HOLD_SECONDS = 1.0


@pytest.fixture
def retries(monkeypatch):
    """The re-runs the wrapper asks Celery for, as (fence, transient_errors, seconds,
    alive_at)."""
    asked = []

    def record(_task, chain, transient_errors, seconds, *, alive_at=None, **_options):
        asked.append((chain.fence, transient_errors, seconds, alive_at))
        return RuntimeError("re-run scheduled")

    monkeypatch.setattr(base, "_retry", record)
    return asked


def run_task(step, request_id, fence, **kwargs):
    """Run the registered task itself (the wrapper), in this thread."""
    return step.task(request_id=str(request_id), fence=fence, **kwargs)


@contextmanager
def statements_of(bench) -> Iterator[list[str]]:
    """The SQL statements the bench's engine runs inside the block, in order."""
    statements: list[str] = []
    engine = bench.sessions.kw["bind"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_an_unexpected_error_fails_that_request_not_the_worker(bench):
    request_id = bench.add(S.BUILDING, job_id="job-1")
    bench.client.on("show_job", ValueError("a body nobody expected"))

    run_task(poll_create_job, request_id, bench.get(request_id).fence)  # returns, no raise

    stored = bench.get(request_id)
    assert stored.state is S.FAILED and stored.failed_step is Step.POLL_CREATE
    assert stored.last_error_code == base.INTERNAL_ERROR_CODE
    assert stored.last_error_message.startswith("ValueError: a body nobody expected (at ")


def test_an_unexpected_error_in_a_cancelled_requests_cleanup_ends_it_with_a_note(bench):
    request_id = bench.add(S.CANCELLED, cleanup_server_id="srv-1")
    bench.client.on("delete_servers", KeyError("job_id"))

    run_task(delete_server, request_id, bench.get(request_id).fence)

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id is None
    assert "srv-1" in stored.last_error_message and "by hand" in stored.last_error_message


def test_redis_unreachable_mid_step_is_retried_and_never_fails_the_request(bench, retries):
    # Seen in the chaos test: Redis restarting during a poll FAILED the request (ORCH.INTERNAL)
    # while its create job ran on, leaving a server that no live request watched.
    request_id = bench.add(S.BUILDING, job_id="job-1")
    fence = bench.get(request_id).fence
    bench.client.on("show_job", redis.ConnectionError("Error 111 connecting to 127.0.0.1"))

    with pytest.raises(RuntimeError, match="re-run scheduled"):
        run_task(poll_create_job, request_id, fence, transient_errors=2)

    assert [r[:3] for r in retries] == [(fence, 3, pytest.approx(4.0))]
    stored = bench.get(request_id)
    assert stored.state is S.BUILDING and stored.job_id == "job-1"
    assert stored.last_error_code is None


def test_a_wait_forgives_earlier_transient_errors_and_carries_the_new_token(bench, retries):
    request_id = bench.add(S.BUILDING, job_id="job-1")
    fence = bench.get(request_id).fence
    bench.client.on("show_job", job("RUNNING"))

    with pytest.raises(RuntimeError, match="re-run scheduled"):
        run_task(poll_create_job, request_id, fence, transient_errors=5)

    assert retries[0][:2] == (fence + 1, 0)
    assert bench.get(request_id).fence == fence + 1


def test_a_429_on_the_marker_lookup_pauses_the_list_class_not_create(bench, retries):
    request_id = bench.add(S.CREATING, create_marker="m1", attempt=1, create_intent_at=utcnow())
    throttled = Throttled(429, "APIGW.0308", "quota")
    throttled.api_class = "list"
    bench.client.on("list_servers", throttled)

    with pytest.raises(RuntimeError):
        run_task(create_server, request_id, bench.get(request_id).fence)

    assert [api_class for api_class, _s in bench.limiter.backed_off] == ["list"]


def test_a_stale_message_does_nothing(bench):
    request_id = bench.add(S.BUILDING, job_id="job-1")
    stale = bench.get(request_id).fence - 1

    run_task(poll_create_job, request_id, stale)

    assert bench.client.calls == []


def hold_row(bench, request_id, holding: threading.Event, release: threading.Event):
    chain = bench.chain(request_id)
    with claim(chain) as (_session, request):
        holding.set()
        release.wait(30)
        advance(request)


def test_a_claim_waits_for_the_holder_and_then_sees_its_hand_off(bench):
    request_id = bench.add(S.BUILDING, job_id="job-1")
    second = bench.chain(request_id)  # a second copy of the same message
    holding, release, second_done = threading.Event(), threading.Event(), threading.Event()
    outcome = {}

    def second_copy():
        try:
            with claim(second):
                outcome["claimed"] = True
        except StaleChain:
            outcome["claimed"] = False
        second_done.set()

    holder = threading.Thread(target=hold_row, args=(bench, request_id, holding, release))
    holder.start()
    assert holding.wait(30)
    other = threading.Thread(target=second_copy)
    other.start()
    blocked = not second_done.wait(HOLD_SECONDS)
    release.set()
    holder.join(30)
    other.join(30)

    assert blocked, "the second claim read the row while the first held it"
    assert outcome == {"claimed": False}  # it saw the hand-off and stopped


def test_concurrent_token_bumps_lose_none(bench):
    request_id = bench.add(S.BUILDING, job_id="job-1")
    start = bench.get(request_id).fence
    holding, release = threading.Event(), threading.Event()

    def bump_unowned():
        with claim(Chain(str(request_id), -1), owned=False) as (_session, request):
            request.fence += 1

    holder = threading.Thread(target=hold_row, args=(bench, request_id, holding, release))
    holder.start()
    assert holding.wait(30)
    other = threading.Thread(target=bump_unowned)
    other.start()
    other.join(HOLD_SECONDS)
    release.set()
    holder.join(30)
    other.join(30)

    assert bench.get(request_id).fence == start + 2  # before, on SQLite: start + 1


def test_a_cancel_during_a_claim_is_not_overwritten_by_the_step(bench):
    request_id = bench.add(S.CREATING, attempt=1)
    holding, release = threading.Event(), threading.Event()

    def step_records_building():
        with claim(bench.chain(request_id)) as (session, request):
            holding.set()
            release.wait(30)
            if request.state is S.CREATING:
                transition(session, request, S.BUILDING, detail="create job job-1")

    step = threading.Thread(target=step_records_building)
    step.start()
    assert holding.wait(30)
    canceller = threading.Thread(target=cancel, args=(bench.sessions, [request_id]))
    canceller.start()
    canceller.join(HOLD_SECONDS)
    release.set()
    step.join(30)
    canceller.join(30)

    stored = bench.get(request_id)
    # The cancel waited for the step's commit, then cancelled the BUILDING request: the one
    # state history has no step writing over a cancel.
    assert stored.state is S.CANCELLED
    states = [to for _f, to, _d in bench.events(request_id)]
    assert states[-2:] == ["BUILDING", "CANCELLED"]


def test_a_create_5xx_that_never_clears_still_ends_the_request(bench, retries):
    """Grace waits between 5xx answers do not forgive them: the budget runs out."""
    request_id = bench.add(S.CREATING, attempt=1, create_marker="m1", create_intent_at=utcnow())
    bench.settings.create_lookup_grace_seconds = 60  # a server may not be listed yet
    bench.client.on("list_servers", ServerPage([], 0))  # the marker is not found (yet)

    with pytest.raises(RuntimeError, match="re-run scheduled"):
        run_task(create_server, request_id, bench.get(request_id).fence, transient_errors=4)

    assert retries[0][1] == 4  # kept, not forgiven: a 5xx that never clears still ends it


def test_lost_create_answers_end_the_request_despite_the_lookup_grace(bench, retries):
    # Every create POST's answer is lost; between two POSTs the marker look-up waits out its
    # grace. That wait follows no progress (nothing was found): it must not forgive the lost
    # POSTs, or the request POSTs forever and never ends.
    bench.settings.create_lookup_grace_seconds = 60
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", CloudConnectionError("dropped", "POST", "/x"))
    bench.client.on("list_servers", ServerPage([], 0))
    fence, errors = bench.get(request_id).fence, 0
    for _run in range(50):
        retries.clear()
        try:
            run_task(create_server, request_id, fence, transient_errors=errors)
        except RuntimeError:
            fence, errors, seconds, _alive_at = retries[0]
            intent = bench.get(request_id).create_intent_at
            if intent is not None:  # the countdown passes
                bench.set(request_id, create_intent_at=as_utc(intent) - timedelta(seconds=seconds))
            continue
        break

    assert bench.get(request_id).state is S.FAILED  # before: still CREATING, POSTing
    assert bench.client.count("create_servers") <= base.MAX_TRANSIENT_ERRORS + 1


def test_a_create_without_capacity_touches_no_row_and_comes_back_in_turn(bench, retries):
    request_id = bench.add(S.PENDING)
    before = bench.get(request_id)
    bench.limiter.denied = 30.0
    with statements_of(bench) as statements:
        for _ in range(20):
            with pytest.raises(RuntimeError, match="re-run scheduled"):
                run_task(create_server, request_id, before.fence, alive_at=time.time())

    assert statements == []  # not a single SQL statement for a run that must wait
    after = bench.get(request_id)
    assert (after.state, after.fence, after.attempt, after.updated_at) == (
        S.PENDING, before.fence, 0, before.updated_at,
    )  # fmt: skip
    waits = [seconds for _fence, _errors, seconds, _alive_at in retries]
    # None before the slot frees, then one by one in the order they were turned away.
    assert waits[0] >= 30 and waits == sorted(waits) and len(set(waits)) == len(waits)


def test_a_cancelled_attach_waiting_for_quota_goes_to_its_cleanup_at_once(
    bench, retries, monkeypatch
):
    # 2,000 attaches waiting at 100 a minute: before, each waited for a slot of its own (taken,
    # then given back) before its claim saw the cancel, and the last server was deleted 20
    # minutes later. Its turn is more than a window (60 s) away: it looks now.
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    fence = bench.get(request_id).fence
    bench.limiter.denied = 120.0
    cancel(bench.sessions, [request_id])
    handed = []
    monkeypatch.setattr(base, "hand_on", handed.append)

    run_task(attach_volume, request_id, fence, alive_at=time.time())

    assert retries == []  # not put back in the queue for quota
    assert [next_task(outcome) for outcome in handed] == ["bms.delete_server"]
    assert bench.client.count("attach_volume") == 0 and bench.limiter.holds == []
    assert bench.get(request_id).cleanup_server_id == "srv-1"


def test_an_attach_waiting_for_quota_reads_only_its_state_and_comes_back(bench, retries):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    before = bench.get(request_id)
    bench.limiter.denied = 120.0  # more than a window
    with statements_of(bench) as statements, pytest.raises(RuntimeError, match="re-run"):
        run_task(attach_volume, request_id, before.fence, alive_at=time.time())

    queries = [text for text in statements if not text.startswith("BEGIN")]  # SQLite's lock
    assert len(queries) == 1 and queries[0].lstrip().upper().startswith("SELECT")
    assert [fence for fence, *_ in retries] == [before.fence]
    after = bench.get(request_id)
    assert (after.state, after.fence, after.updated_at) == (
        S.ATTACHING, before.fence, before.updated_at,
    )  # fmt: skip


def test_a_create_spends_the_slot_reserved_for_it(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", BadRequest(400, "BMS.0001", "refused"))  # ends here

    run_task(create_server, request_id, bench.get(request_id).fence, slot=41)

    assert bench.limiter.holds == [("create", 41)]
    assert bench.client.count("create_servers") == 1


def test_a_run_holding_a_booked_slot_reports_how_late_after_its_eta_it_started(bench):
    sent_for = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()  # Celery's ETA header

    with base._holding("create", 41, sent_for):
        pass
    with base._holding("create", None, sent_for), base._holding("create", 42, None):
        pass  # a slot taken on the spot, or one sent for no instant: nothing to learn from

    assert [api_class for api_class, _seconds in bench.limiter.pickups] == ["create"]
    assert bench.limiter.pickups[0][1] >= 30
    assert bench.limiter.holds == [("create", 41), ("create", None), ("create", 42)]


# -- waiting for quota: a booked slot, or a turn among the runs turned away --------------------


@pytest.fixture
def comebacks(monkeypatch):
    """The re-runs the wrapper asks Celery for, as the seconds and what the re-run carries."""
    asked = []

    def record(_task, chain, transient_errors, seconds, jittered=False, **carried):
        turn = carried.get("queued")
        asked.append((seconds, carried.get("slot"), None if turn is None else turn - time.time()))
        return RuntimeError("re-run scheduled")

    monkeypatch.setattr(base, "_retry", record)
    return asked


def turned_away(bench, request_id, **kwargs) -> None:
    with pytest.raises(RuntimeError, match="re-run scheduled"):
        run_task(attach_volume, request_id, bench.get(request_id).fence, alive_at=time.time(),
                 **kwargs)  # fmt: skip


def test_a_run_turned_away_first_books_the_next_slot_and_comes_back_a_lead_before_it(
    bench, comebacks
):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.limiter.denied, bench.limiter.bookable, bench.limiter.lead_seconds = 4.0, [4.0], 0.05

    turned_away(bench, request_id)

    [(entry_class, entry)] = bench.limiter.booked
    assert entry_class == "attach"
    # Its call waits in the run for the instant itself; the message only has to be there.
    assert comebacks == [(pytest.approx(3.95), entry, None)]
    assert bench.limiter.next_turn == 0.0  # nobody waited: it took no turn in the queue


def test_a_run_that_comes_back_with_a_booked_slot_reads_nothing_of_its_request(bench, comebacks):
    # Its claim at the slot's instant sees a cancel; a read now would be one statement per
    # run turned away (issue 11: statements per server with 2 volumes).
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    fence = bench.get(request_id).fence
    bench.limiter.denied, bench.limiter.bookable = 4.0, [4.0]

    with statements_of(bench) as statements, pytest.raises(RuntimeError, match="re-run"):
        run_task(attach_volume, request_id, fence, alive_at=time.time())

    assert statements == [] and [slot for _seconds, slot, _turn in comebacks] == [500]


def test_an_attach_back_within_a_window_reads_nothing_and_sees_a_cancel_at_its_next_run(
    bench, retries, monkeypatch
):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    fence = bench.get(request_id).fence
    cancel(bench.sessions, [request_id])
    bench.limiter.denied = 30.0  # its turn: half a window away
    handed = []
    monkeypatch.setattr(base, "hand_on", handed.append)

    with statements_of(bench) as statements, pytest.raises(RuntimeError, match="re-run"):
        run_task(attach_volume, request_id, fence, alive_at=time.time())
    assert statements == [] and handed == []  # not read: it is back within the window

    bench.limiter.denied, bench.limiter.bookable = None, []  # its slot, at its turn
    run_task(attach_volume, request_id, fence, alive_at=time.time(), queued=time.time())

    assert [next_task(outcome) for outcome in handed] == ["bms.delete_server"]
    assert bench.client.count("attach_volume") == 0


def test_a_run_turned_away_whose_booked_slot_is_at_hand_holds_it_and_goes_on(bench, comebacks):
    # Sending itself again for an instant a pickup away would cost a task run for nothing.
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.client.on("attach_volume", {"job_id": "job-a"})
    bench.client.on("show_job", job("RUNNING"))
    bench.limiter.denied, bench.limiter.bookable = 4.0, [0.05]

    run_task(attach_volume, request_id, bench.get(request_id).fence, alive_at=time.time())

    assert comebacks == [] and bench.client.count("attach_volume") == 1
    assert bench.limiter.holds == [("attach", 500)]


def test_a_stale_run_turned_away_gives_its_booked_slot_back(bench, comebacks):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    fence = bench.get(request_id).fence
    with session_scope(bench.sessions) as session:
        advance(session.get(ServerRequest, request_id))  # another message owns it now
    bench.limiter.denied, bench.limiter.bookable = 4.0, [4.0]

    run_task(attach_volume, request_id, fence, alive_at=None)

    assert comebacks == [] and bench.limiter.released == [500]


def test_runs_turned_away_while_others_wait_come_back_in_turn_and_book_nothing(bench, comebacks):
    # Before: each came back at a random point of the window, so a freed slot idled until one
    # did, and a run turned away last could take the slot of one turned away first (1,000
    # attaches at 100 per 10 s: some waited 80 s, the last attach came 15 s after its bound).
    first = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    second = bench.add(S.ATTACHING, server_id="srv-2", volumes=1)
    bench.limiter.denied, bench.limiter.bookable, bench.limiter.next_turn = 4.0, [4.0], 7.0

    turned_away(bench, first)
    turned_away(bench, second)

    # Each re-run carries its turn, so that it keeps its place should it come back early.
    assert comebacks == [(7.0, None, approx(7.0)), (8.0, None, approx(8.0))]
    assert bench.limiter.booked == [] and bench.limiter.bookable == [4.0]  # left to those before


def test_a_run_back_at_its_turn_books_the_slot_even_while_others_wait(bench, comebacks):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.limiter.denied, bench.limiter.bookable, bench.limiter.next_turn = 4.0, [4.0], 7.0

    turned_away(bench, request_id, queued=time.time())

    [(_class, entry)] = bench.limiter.booked
    assert comebacks == [(4.0, entry, None)]


def test_a_run_back_at_its_turn_with_every_slot_booked_takes_the_next_turn(bench, comebacks):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.limiter.denied, bench.limiter.bookable, bench.limiter.next_turn = 4.0, [], 7.0

    turned_away(bench, request_id, queued=time.time())

    assert comebacks == [(7.0, None, approx(7.0))] and bench.limiter.booked == []


def test_a_run_back_long_before_its_turn_keeps_it(bench, comebacks):
    # A countdown is capped at 600 s; a turn may be further off (2,000 attaches at 100 a
    # minute). Taking a new turn then would put it behind every run turned away since.
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.limiter.denied, bench.limiter.bookable, bench.limiter.next_turn = 4.0, [4.0], 7.0

    turned_away(bench, request_id, queued=time.time() + 900)

    assert comebacks == [(approx(900), None, approx(900))]
    assert bench.limiter.booked == [] and bench.limiter.next_turn == 7.0  # no turn taken


def test_a_run_turned_away_by_an_unreachable_limiter_books_nothing_and_spreads_its_retry(
    bench, comebacks, monkeypatch
):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    bench.limiter.bookable = [0.5]
    unreachable = LimiterUnreachable("attach", 2.0)
    monkeypatch.setattr(bench.limiter, "hold", lambda *args, **kwargs: raises(unreachable))

    turned_away(bench, request_id)

    [(seconds, slot, queued)] = comebacks
    assert seconds >= 2.0 and (slot, queued) == (None, None) and bench.limiter.booked == []


def raises(exc: BaseException):
    raise exc


def approx(seconds: float):
    return pytest.approx(seconds, abs=0.5)


# -- waiting for quota longer than the reconciler's patience ----------------------------------


def make_idle(bench, request_id, seconds: float) -> None:
    """The row last touched ``seconds`` ago, as after a long wait in the queue."""
    with session_scope(bench.sessions) as session:
        session.execute(
            update(ServerRequest)
            .where(ServerRequest.id == request_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def stalled(bench) -> list:
    with session_scope(bench.sessions) as session:
        return stalled_request_ids(session, bench.settings.reconcile_after_seconds)


def test_a_step_waiting_for_quota_keeps_its_request_off_the_reconcilers_list(bench, retries):
    # 2,000 attaches at 100 a minute: a request may wait 20 minutes for its slot. Its message
    # is alive all along; rebuilt as stalled every 10 minutes, it used to be ended after
    # BMS_MAX_RESTARTS rebuilds (ORCH.STALLED) with nothing wrong but the queue.
    patience = bench.settings.reconcile_after_seconds
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    fence = bench.get(request_id).fence
    make_idle(bench, request_id, patience + 1)
    bench.client.on("attach_volume", NoCapacity("attach", 30.0, 60.0))

    with pytest.raises(RuntimeError, match="re-run scheduled"):
        run_task(attach_volume, request_id, fence, alive_at=time.time() - patience)

    assert stalled(bench) == []
    [(retry_fence, _errors, _seconds, alive_at)] = retries
    assert retry_fence == fence and alive_at == pytest.approx(time.time(), abs=5)


def test_a_recent_keep_alive_costs_no_statement_and_is_carried_on(bench, retries):
    request_id = bench.add(S.PENDING)
    fence = bench.get(request_id).fence
    bench.limiter.denied = 30.0
    alive_at = time.time() - 5
    with statements_of(bench) as statements, pytest.raises(RuntimeError, match="re-run"):
        run_task(create_server, request_id, fence, alive_at=alive_at)

    assert statements == []
    assert retries[0][3] == alive_at


def test_a_stale_message_waiting_for_quota_stops_at_its_keep_alive(bench, retries):
    # Rebuilt by the reconciler meanwhile (token advanced): this copy must not wait on.
    request_id = bench.add(S.PENDING)
    fence = bench.get(request_id).fence
    with session_scope(bench.sessions) as session:
        advance(session.get(ServerRequest, request_id))
    bench.limiter.denied = 30.0
    before = bench.get(request_id).updated_at

    run_task(create_server, request_id, fence, alive_at=None)

    assert retries == []
    assert bench.get(request_id).updated_at == before
