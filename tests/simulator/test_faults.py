"""Fault injection: failing jobs, 5xx answers, dropped connections, and seeded repeats."""

from __future__ import annotations

import pytest
import requests

from simulator.config import FaultSettings
from simulator.faults import FaultInjector
from tests.simulator.helpers import V1, VOLUME_ID


def test_a_create_fail_share_of_one_fails_every_sub_job_with_a_code(simulator_factory):
    simulator = simulator_factory(auth=False, create_fail_share=1.0)
    v1 = V1(simulator)

    job = v1.job(v1.create(name="doomed", count=4).json()["job_id"])

    assert job["status"] == "FAIL"
    assert job["error_code"] in ("BMS.3037", "BMS.3004")
    for sub in job["entities"]["sub_jobs"]:
        assert sub["status"] == "FAIL"
        assert sub["error_code"] in ("BMS.3037", "BMS.3004")
        assert sub["fail_reason"]
        assert sub["entities"]["errorcode_message"] == sub["fail_reason"]
        server = v1.call("GET", f"/baremetalservers/{sub['entities']['server_id']}").json()
        assert server["server"]["status"] == "ERROR"
        assert server["server"]["fault"]["message"].startswith(sub["error_code"])


def test_attach_failures_return_the_volume(simulator_factory):
    simulator = simulator_factory(auth=False)
    v1 = V1(simulator)
    server_id = v1.create_active()
    simulator.control.set_faults(attach_fail_share=1.0)

    body = {"volumeAttachment": {"volumeId": VOLUME_ID}}
    response = v1.call("POST", f"/baremetalservers/{server_id}/attachvolume", json=body)

    assert v1.job(response.json()["job_id"])["status"] == "FAIL"
    volume = next(v for v in simulator.control.volumes() if v["id"] == VOLUME_ID)
    assert (volume["status"], volume["server_id"]) == ("available", None)


def test_5xx_shares_answer_with_gateway_bodies_and_are_counted(simulator_factory):
    simulator = simulator_factory(auth=False, http_500_share=0.5, http_503_share=0.5)
    v1 = V1(simulator)

    responses = [v1.call("GET", "/baremetalservers/detail") for _ in range(20)]

    assert {r.status_code for r in responses} == {500, 503}
    assert all(r.json()["error_code"] == "APIGW.0201" for r in responses)
    assert simulator.control.counters()["list"]["faults"] == 20


def test_a_dropped_create_still_creates_the_server(simulator_factory):
    simulator = simulator_factory(auth=False, drop_share=1.0)
    v1 = V1(simulator)

    with pytest.raises(requests.ConnectionError):
        v1.create(name="lost-answer")

    servers = simulator.control.servers()
    assert [s["name"] for s in servers] == ["lost-answer"]
    assert simulator.control.counters()["create"]["faults"] == 1


def fault_sequence(seed: int) -> list:
    injector = FaultInjector(
        FaultSettings(http_500_share=0.2, drop_share=0.2, create_fail_share=0.5, seed=seed),
        ["BMS.3037", "BMS.3004"],
    )
    return [(injector.http_fault(), injector.create_failure()) for _ in range(50)]


def test_the_same_seed_repeats_the_same_decisions():
    assert fault_sequence(7) == fault_sequence(7)
    assert fault_sequence(7) != fault_sequence(8)


def test_the_same_seed_repeats_over_http(simulator_factory):
    def statuses(seed: int) -> list[int]:
        simulator = simulator_factory(auth=False, http_503_share=0.5, seed=seed)
        v1 = V1(simulator)
        return [v1.call("GET", "/baremetalservers/flavors").status_code for _ in range(30)]

    first = statuses(3)

    assert first == statuses(3)
    assert set(first) == {200, 503}


def test_fault_settings_change_at_run_time_and_are_validated(simulator):
    assert simulator.control.set_faults(http_503_share=0.25)["http_503_share"] == 0.25
    assert simulator.control.faults()["http_503_share"] == 0.25
    with pytest.raises(Exception, match="400"):
        simulator.control.set_faults(http_503_share=2)


def test_latency_delays_cloud_calls_but_not_introspection(simulator_factory):
    simulator = simulator_factory(auth=False, latency_ms=150)
    v1 = V1(simulator)

    cloud = v1.call("GET", "/baremetalservers/flavors").elapsed.total_seconds()
    introspection = v1.session.get(f"{simulator.base_url}/_sim/faults", timeout=10)

    assert cloud >= 0.15
    assert introspection.elapsed.total_seconds() < 0.15


@pytest.mark.parametrize(("count", "share", "failed"), [(10, 0.3, 3), (4, 0.1, 1), (5, 1.0, 5)])
def test_a_count_fail_share_fails_that_share_of_a_count_create(
    simulator_factory, count, share, failed
):
    simulator = simulator_factory(auth=False, count_fail_share=share, seed=3)
    v1 = V1(simulator)

    job = v1.job(v1.create(name="group", count=count).json()["job_id"])

    statuses = [sub["status"] for sub in job["entities"]["sub_jobs"]]
    assert statuses.count("FAIL") == failed
    assert statuses.count("SUCCESS") == count - failed
    assert job["status"] == "FAIL"  # a partly failed create job fails at the top
    built = [s for s in simulator.control.servers() if s["status"] == "ACTIVE"]
    assert len(built) == count - failed
    assert all(s["name"].startswith("group-") for s in built)


def test_a_count_fail_share_spares_single_creates_and_repeats_with_its_seed(simulator_factory):
    def failed_positions(seed: int) -> list[int]:
        simulator = simulator_factory(auth=False, count_fail_share=0.5, seed=seed)
        v1 = V1(simulator)
        assert v1.job(v1.create(name="solo").json()["job_id"])["status"] == "SUCCESS"
        job = v1.job(v1.create(name="group", count=8).json()["job_id"])
        subs = job["entities"]["sub_jobs"]
        return [i for i, sub in enumerate(subs) if sub["status"] == "FAIL"]

    assert failed_positions(5) == failed_positions(5)
    assert len(failed_positions(5)) == 4
