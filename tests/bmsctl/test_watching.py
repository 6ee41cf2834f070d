"""The time-left estimate of ``bmsctl watch``: the rate so far, bounded by the busiest quota."""

from __future__ import annotations

from bmsctl.watching import eta_text, quota_seconds, quotas_per_second

QUOTAS = quotas_per_second("create=50/minute;update=100/minute;list=500/minute")


def test_before_any_request_finished_the_create_quota_already_bounds_the_wait():
    # 100 creates at 50 a minute take two minutes, whatever the first seconds looked like.
    assert eta_text(0, 100, 3.0, {"PENDING": 100}, QUOTAS) == "~120s left"


def test_a_fast_start_does_not_promise_less_than_the_quota_allows():
    # 10 done in 5 s would say ~45 s for the other 90; 90 creates need 108 s at 50 a minute.
    counts = {"ACTIVE": 10, "PENDING": 80, "CREATING": 10}
    assert eta_text(10, 100, 5.0, counts, QUOTAS) == "~108s left"


def test_when_the_quota_is_not_the_bottleneck_the_rate_is_used():
    counts = {"ACTIVE": 5, "BUILDING": 5}
    assert eta_text(5, 10, 60.0, counts, QUOTAS) == "~60s left"


def test_the_busiest_class_is_the_one_that_counts():
    # 40 creates (48 s at 50/min) against 100 renames (60 s at 100/min): renames win.
    counts = {"PENDING": 40, "TAGGING": 60}
    assert quota_seconds(counts, QUOTAS) == 60.0


def test_an_unreadable_quota_setting_falls_back_to_the_defaults():
    assert quotas_per_second("create=fast")["create"] == 50 / 60
