"""Per-class sliding-window quotas: parsing, the 51st create, and the window sliding."""

from __future__ import annotations

import pytest

from simulator import FakeClock
from simulator.quota import QuotaBook, parse_quotas
from tests.simulator.helpers import V1


def test_partial_specs_keep_the_default_quotas_of_other_classes():
    quotas = parse_quotas("create=20/second;show=5/2 minutes")

    assert (quotas["create"].amount, quotas["create"].window_seconds) == (20, 1.0)
    assert (quotas["show"].amount, quotas["show"].window_seconds) == (5, 120.0)
    assert (quotas["job"].amount, quotas["job"].window_seconds) == (2000, 60.0)


@pytest.mark.parametrize("spec", ["create", "nosuch=1/minute", "create=fast"])
def test_malformed_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_quotas(spec)


def test_a_refused_call_does_not_move_the_window():
    clock = FakeClock()
    book = QuotaBook("update=2/minute", clock)

    assert book.admit("update") is None
    clock.advance(30)
    assert book.admit("update") is None
    assert book.admit("update") is not None
    clock.advance(30)
    assert book.admit("update") is None
    assert book.admit("update") is not None


def test_the_51st_create_in_a_window_is_throttled_until_the_window_slides(simulator_factory):
    clock = FakeClock()
    simulator = simulator_factory(auth=False, clock=clock)
    v1 = V1(simulator)

    statuses = []
    for _ in range(50):
        statuses.append(v1.create().status_code)
        clock.advance(0.5)
    throttled = v1.create()

    assert statuses == [200] * 50
    assert throttled.status_code == 429
    body = throttled.json()
    assert body["error_code"] == "APIGW.0308"
    assert body["error_msg"] == (
        "The throttling threshold has been reached: policy user over ratelimit,"
        "limit:50,time:1 minute"
    )
    assert body["request_id"] == throttled.headers["X-Request-Id"]
    assert v1.call("GET", "/baremetalservers/detail").status_code == 200
    clock.advance(35.0)  # the first create is now more than 60 s old
    assert v1.create().status_code == 200
    assert v1.create().status_code == 429
    counters = simulator.control.counters()["create"]
    assert (counters["calls"], counters["throttled"]) == (53, 2)


def test_quotas_change_at_run_time(simulator_factory):
    simulator = simulator_factory(auth=False, quotas="create=1/minute")
    v1 = V1(simulator)

    assert v1.create().status_code == 200
    assert v1.create().status_code == 429
    assert simulator.control.set_quotas("create=5/second")["create"] == "5/second"
    assert v1.create().status_code == 200
