"""The global limiter against a real Redis: quota, waits, sharing between processes, 429 pause."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from limits import parse

from bmsctl.processes import free_port, start_redis
from worker.limiter import (
    MAX_LEAD_SECONDS,
    PICKUP_SAMPLES,
    GlobalLimiter,
    LimiterUnreachable,
    NoCapacity,
)


@pytest.fixture
def limiter(redis_url):
    limiter = GlobalLimiter(redis_url, {"create": parse("5/second"), "show": parse("3/minute")})
    limiter.clear()
    yield limiter
    limiter.clear()


def admitted(limiter: GlobalLimiter, api_class: str, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            limiter.acquire(api_class)
            count += 1
        except NoCapacity:
            pass
    return count


def test_admits_the_quota_then_says_how_long_to_wait(limiter):
    assert admitted(limiter, "show", 10) == 3
    with pytest.raises(NoCapacity) as denied:
        limiter.acquire("show")
    # The oldest call leaves the 60 s window (plus its margin) in about a minute.
    assert 55 < denied.value.wait_seconds <= 62
    assert denied.value.api_class == "show"


def test_classes_have_separate_windows(limiter):
    assert admitted(limiter, "show", 5) == 3
    assert admitted(limiter, "create", 5) == 5


def test_a_slot_frees_when_its_call_leaves_the_window(limiter):
    for _ in range(5):
        limiter.acquire("create")()  # called and answered
    with pytest.raises(NoCapacity) as denied:
        limiter.acquire("create")
    time.sleep(denied.value.wait_seconds)  # the wait the limiter itself prescribes
    limiter.acquire("create")


def _hammer(redis_url: str, results) -> None:
    limiter = GlobalLimiter(redis_url, {"show": parse("3/minute")})
    results.put(admitted(limiter, "show", 10))


def test_processes_share_one_quota(limiter, redis_url):
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_hammer, args=(redis_url, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert sum(results.get(timeout=5) for _ in workers) == 3


def test_a_429_pauses_the_class_for_every_worker(limiter, redis_url):
    limiter.back_off("create", 30)
    other_process_view = GlobalLimiter(redis_url, {"create": parse("5/second")})
    with pytest.raises(NoCapacity) as denied:
        other_process_view.acquire("create")
    assert 25 < denied.value.wait_seconds <= 30
    limiter.back_off("create", 1)  # a later, shorter 429 does not shorten the pause
    with pytest.raises(NoCapacity) as again:
        limiter.acquire("create")
    assert again.value.wait_seconds > 25


def test_a_slot_counts_from_when_the_answer_came_back(limiter):
    completions = [limiter.acquire("create") for _ in range(5)]
    time.sleep(0.5)  # the calls are "in flight" this long
    for completed in completions:
        completed()
    with pytest.raises(NoCapacity) as denied:
        limiter.acquire("create")
    # A full window from the answers, not from the admissions (which were 0.5 s earlier).
    assert denied.value.wait_seconds > 0.9


# -- capacity(), reservations and held slots (the batch feeder and capacity-first creates) -----


def test_capacity_reads_without_taking(limiter):
    assert limiter.capacity("show").free == 3
    assert limiter.capacity("show").wait_seconds == 0
    admitted(limiter, "show", 2)

    seen = [limiter.capacity("show") for _ in range(5)]

    assert {view.free for view in seen} == {1}  # reading took nothing
    assert seen[0].limit == 3 and seen[0].window_seconds == 60
    assert admitted(limiter, "show", 5) == 1


def test_capacity_says_when_the_next_slot_frees_and_honours_a_pause(limiter):
    admitted(limiter, "show", 3)
    full = limiter.capacity("show")
    assert full.free == 0 and 55 < full.wait_seconds <= 62

    limiter.back_off("create", 30)
    paused = limiter.capacity("create")
    assert paused.free == 0 and 25 < paused.wait_seconds <= 30


def test_reserve_takes_at_most_what_is_free_and_says_when_more_frees(limiter):
    first = limiter.reserve("show", 2)
    assert len(first.entries) == 2 and first.wait_seconds == 0  # one is still free
    second = limiter.reserve("show", 5)
    # None answered yet: when a slot frees is unknown, so back after a slot's share (20 s).
    assert len(second.entries) == 1 and second.wait_seconds == 20
    assert limiter.reserve("show", 5).entries == []
    assert len(set(first.entries + second.entries)) == 3

    limiter.release("show", first.entries)  # not spent: the slots are free again

    assert limiter.capacity("show").free == 2


def test_a_held_reservation_is_spent_by_the_call_without_taking_another(limiter):
    (entry,) = limiter.reserve("show", 1).entries
    with limiter.hold("show", entry):
        completed = limiter.acquire("show")  # spends the reservation
        completed()
        limiter.acquire("show")  # a second call in the same run takes its own slot
    assert limiter.capacity("show").free == 1


def test_a_slot_held_but_not_spent_is_given_back(limiter):
    with limiter.hold("show"):
        assert limiter.capacity("show").free == 2
    assert limiter.capacity("show").free == 3
    (entry,) = limiter.reserve("show", 1).entries
    with pytest.raises(RuntimeError), limiter.hold("show", entry):
        raise RuntimeError("the step failed before its call")
    assert limiter.capacity("show").free == 3


def test_a_reservation_held_by_two_copies_of_a_message_is_spent_by_one(limiter):
    # At-least-once delivery: two copies of the message that carries the entry run side by
    # side. Before, both held the entry; the copy that stopped (stale) gave it back while the
    # other copy's call was made on it: one call more than the quota in that window.
    (entry,) = limiter.reserve("show", 1).entries
    with limiter.hold("show", entry):
        limiter.acquire("show")()  # the first copy's call, made and answered
        with limiter.hold("show", entry):  # the second copy: a slot of its own, not spent
            assert limiter.capacity("show").free == 1
    assert limiter.capacity("show").free == 2  # the first copy's call still counts


def test_hold_without_capacity_takes_nothing_and_says_the_window(limiter):
    admitted(limiter, "show", 3)
    with pytest.raises(NoCapacity) as denied, limiter.hold("show"):
        pytest.fail("must not run without a slot")
    assert denied.value.window_seconds == 60 and 55 < denied.value.wait_seconds <= 62


def test_a_reservation_that_left_the_window_is_replaced_by_a_fresh_slot(limiter, redis_url):
    (entry,) = limiter.reserve("create", 1).entries
    limiter.release("create", [entry])  # as if it had aged out of the window
    admitted(limiter, "create", 4)
    with limiter.hold("create", entry):  # the one slot left is taken instead
        assert limiter.capacity("create").free == 0
        limiter.acquire("create")
    with pytest.raises(NoCapacity), limiter.hold("create", entry):
        pass


def test_a_reservation_is_dropped_while_the_class_is_paused(limiter):
    (entry,) = limiter.reserve("create", 1).entries
    limiter.back_off("create", 30)
    with pytest.raises(NoCapacity) as denied, limiter.hold("create", entry):
        pass
    assert denied.value.wait_seconds > 25
    limiter._redis.delete("bms:limit:backoff:create")
    assert limiter.capacity("create").free == 5


def answered(limiter: GlobalLimiter, api_class: str, count: int) -> None:
    for _ in range(count):
        limiter.acquire(api_class)()


def test_slots_are_booked_ahead_only_from_answered_calls_never_past_the_quota(limiter):
    answered(limiter, "create", 5)  # a full window of 5/second, all answered
    time.sleep(0.3)

    booked = limiter.reserve("create", 10, ahead=2.0)

    # The five slots free as the answered calls leave (about 0.7 s from now): booked there,
    # not earlier; more would need the answers of the booked ones, which are still to come.
    assert len(booked.entries) == 5
    assert all(0.6 < delay <= 0.75 for delay in booked.delays), booked.delays
    assert limiter.reserve("create", 1, ahead=2.0).entries == []
    with pytest.raises(NoCapacity):
        limiter.acquire("create")


def test_a_call_still_in_flight_holds_its_slot_against_bookings(limiter):
    in_flight = [limiter.acquire("create") for _ in range(3)]  # not answered
    answered(limiter, "create", 2)

    booked = limiter.reserve("create", 5, ahead=5.0)

    # Three slots stay with the calls in flight (their answers restamp them, anywhere later):
    # only the two answered ones may be booked ahead.
    assert len(booked.entries) == 2
    for completed in in_flight:
        completed()


def test_a_call_never_answered_keeps_its_slot_a_grace_longer(limiter):
    limiter.acquire("create")  # its worker died mid-call: no answer ever restamps it
    answered(limiter, "create", 4)
    time.sleep(1.1)  # a window later

    # The four answered slots are free again; the one in flight is held for the grace.
    assert admitted(limiter, "create", 10) == 4


def test_an_unreachable_redis_admits_no_call_and_says_when_to_retry():
    nobody_listens = f"redis://127.0.0.1:{free_port()}/0"
    limiter = GlobalLimiter(nobody_listens, {"create": parse("5/second")})

    for admit in (
        lambda: limiter.acquire("create"),
        lambda: limiter.reserve("create", 3),
        lambda: limiter.turn("create", 0.0),
        lambda: limiter.hold("create").__enter__(),
        lambda: limiter.hold("create", entry=7).__enter__(),
    ):
        with pytest.raises(LimiterUnreachable) as denied:
            admit()
        # A NoCapacity: the step wrapper re-schedules it like any quota wait, spending no budget.
        assert isinstance(denied.value, NoCapacity) and denied.value.api_class == "create"
        assert denied.value.wait_seconds > 0


def test_a_call_admitted_before_redis_went_away_keeps_its_answer(tmp_path):
    server, url = start_redis(tmp_path)
    limiter = GlobalLimiter(url, {"create": parse("5/second")})
    try:
        completed = limiter.acquire("create")
        holding = limiter.hold("create")
        holding.__enter__()
    finally:
        server.stop()

    # The call was made (a create, say): neither the re-stamp, nor giving a held slot back,
    # nor sharing a 429 pause may raise now and lose the answer in hand.
    completed()
    holding.__exit__(None, None, None)
    limiter.back_off("create", 5.0)


def test_a_booked_slot_held_before_its_instant_makes_its_call_wait_for_it(limiter):
    answered(limiter, "create", 5)  # a full window: the next slots free within a second
    time.sleep(0.3)
    booked = limiter.reserve("create", 1, ahead=2.0)
    (entry,), (delay,) = booked.entries, booked.delays
    stamp = limiter._redis.zscore("bms:limit:create", entry)
    waited = []
    limiter.sleep = waited.append  # the run started a lead ahead of the slot's instant

    with limiter.hold("create", entry):
        # Held, not moved to now: the slot is not taken before its instant.
        assert limiter._redis.zscore("bms:limit:create", entry) == stamp
        limiter.acquire("create")()

    assert len(waited) == 1 and 0 < waited[0] <= delay


def test_a_held_slot_due_now_is_spent_without_waiting(limiter):
    (entry,) = limiter.reserve("create", 1).entries
    waited = []
    limiter.sleep = waited.append
    with limiter.hold("create", entry):
        limiter.acquire("create")()
    assert waited == []


def test_a_held_slot_far_ahead_is_given_back_not_waited_for_in_a_pool_child(limiter):
    answered(limiter, "show", 3)  # 3/minute: the next slot frees in about a minute
    (entry,) = limiter.reserve("show", 1, ahead=120.0).entries
    with pytest.raises(NoCapacity) as denied, limiter.hold("show", entry):
        pytest.fail("must not run that early")
    assert denied.value.wait_seconds > 30
    assert limiter._redis.zscore("bms:limit:show", entry) is None  # given back


def test_the_lead_is_the_pickup_most_runs_stayed_within_and_is_bounded(limiter):
    assert limiter.lead("create") == 0  # nothing sampled: sent for the instant itself
    for seconds in [0.01] * 9 + [0.08]:
        limiter.record_pickup("create", seconds)
    assert limiter.lead("create") == 0.08  # the 90% quantile of the last samples
    for _ in range(PICKUP_SAMPLES):
        limiter.record_pickup("create", 0.03)
    assert limiter.lead("create") == 0.03  # only the latest samples count
    for _ in range(PICKUP_SAMPLES):
        limiter.record_pickup("create", 30.0)
    assert limiter.lead("create") == MAX_LEAD_SECONDS <= 0.1  # a child waits briefly


def test_a_pickup_is_sampled_in_the_round_trip_that_adopts_its_slot(limiter, monkeypatch):
    entry = limiter.reserve("create", 1).entries[0]
    scripts: list[int] = []
    original = type(limiter._redis).evalsha
    monkeypatch.setattr(
        type(limiter._redis),
        "evalsha",
        lambda r, *a, **k: scripts.append(1) or original(r, *a, **k),
    )
    sent = []
    monkeypatch.setattr(type(limiter._redis), "pipeline", lambda *a, **k: sent.append(1))

    with limiter.hold("create", entry, pickup=0.05):
        pass

    assert sent == [] and len(scripts) == 1  # the adoption alone (the slot given back: ZREMs)
    assert limiter.lead("create") == 0.05


def test_callers_turned_away_get_turns_in_order_one_slot_share_apart(limiter):
    # "show": 3 a minute, so a turn every 20 s of the window (plus its margin).
    first = limiter.turn("show", 5.0)
    second = limiter.turn("show", 0.0)
    third = limiter.turn("show", 0.0)

    assert 4.9 < first <= 5.0  # nobody waits before it: its earliest instant
    # Each caller after it comes back one share later, whatever earliest it asks for.
    assert 20.0 < second - first < 20.2 and 20.0 < third - second < 20.2
    assert limiter.turn("create", 0.0) <= 0.01  # another class has a queue of its own


def test_a_caller_that_queues_only_behind_others_leaves_an_empty_queue_alone(limiter):
    alone = limiter.turn("show", 0.0, behind_others=True)
    first = limiter.turn("show", 0.0)
    behind = limiter.turn("show", 0.0, behind_others=True)

    # Nobody waited: no turn taken (before, it took one, and the next caller came a share later).
    assert alone == 0 and first <= 0.01
    assert 20.0 < behind - first < 20.2  # someone waits: a turn behind them


def test_a_late_caller_never_gets_a_turn_before_its_earliest_instant(limiter):
    limiter.turn("show", 0.0)

    assert 39.9 < limiter.turn("show", 40.0) <= 40.0  # the queue ends sooner than it may come
