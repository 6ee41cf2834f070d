"""The global limiter against a real Redis: quota, waits, sharing between processes, 429 pause."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from limits import parse

from worker.limiter import GlobalLimiter, NoCapacity


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
    assert admitted(limiter, "create", 5) == 5
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
