"""``--state-file``: the simulated cloud survives a restart, and jobs lost mid-way settle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator import FakeClock
from simulator.persist import LOST_JOB_CODE, StateFileError
from tests.simulator.helpers import V1, VOLUME_ID

OTHER_VOLUME = "e5e5e5e5-0000-4000-8000-000000000002"


def attach(v1: V1, server_id: str, volume_id: str) -> dict:
    body = {"volumeAttachment": {"volumeId": volume_id}}
    response = v1.call("POST", f"/baremetalservers/{server_id}/attachvolume", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def volume(v1: V1, volume_id: str) -> dict:
    volumes = v1.session.get(f"{v1.base.split('/v1/')[0]}/_sim/volumes", timeout=10).json()
    return next(v for v in volumes["volumes"] if v["id"] == volume_id)


def test_a_restarted_simulator_keeps_servers_volumes_and_jobs(simulator_factory, tmp_path):
    state_file = tmp_path / "sim.json"
    first = simulator_factory(auth=False, state_file=str(state_file))
    v1 = V1(first)
    server_id = v1.create_active(name="kept")
    attach_job = attach(v1, server_id, VOLUME_ID)["job_id"]
    assert v1.job(attach_job)["status"] == "SUCCESS"
    first.stop()

    second = simulator_factory(auth=False, state_file=str(state_file))
    again = V1(second)

    assert second.loaded_state
    server = again.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert (server["name"], server["status"]) == ("kept", "ACTIVE")
    assert again.job(attach_job)["status"] == "SUCCESS"
    assert volume(again, VOLUME_ID)["status"] == "in-use"
    # New servers get addresses and MACs the old ones do not hold.
    other_id = again.create_active(name="new")
    other = again.call("GET", f"/baremetalservers/{other_id}").json()["server"]
    old_ips = {a["addr"] for nets in server["addresses"].values() for a in nets}
    new_ips = {a["addr"] for nets in other["addresses"].values() for a in nets}
    assert old_ips.isdisjoint(new_ips)


def test_jobs_running_at_a_hard_stop_settle_at_the_next_load(simulator_factory, tmp_path):
    """The state saved while a create and an attach ran (as a SIGKILL leaves it)."""
    state_file = tmp_path / "sim.json"
    clock = FakeClock()
    first = simulator_factory(
        auth=False, clock=clock, job_seconds=(10.0, 10.0), state_file=str(state_file)
    )
    v1 = V1(first)
    created = v1.create(name="ready").json()["job_id"]
    clock.advance(10)
    ready_id = v1.server_ids(v1.job(created))[0]
    attach_job = attach(v1, ready_id, VOLUME_ID)["job_id"]
    building_job = v1.create(name="building").json()["job_id"]
    clock.advance(2)  # the new server exists, BUILD; the attach runs
    building_id = v1.server_ids(v1.job(building_job))[0]
    first._persister.save()  # what the periodic save wrote before the kill
    saved = state_file.read_text()
    first.stop()
    state_file.write_text(saved)

    second = simulator_factory(auth=False, state_file=str(state_file))
    again = V1(second)

    lost = again.job(building_job)
    assert (lost["status"], lost["error_code"]) == ("FAIL", LOST_JOB_CODE)
    building = again.call("GET", f"/baremetalservers/{building_id}").json()["server"]
    assert building["status"] == "ERROR"
    assert again.job(attach_job)["status"] == "FAIL"
    assert volume(again, VOLUME_ID)["status"] == "available"
    ready = again.call("GET", f"/baremetalservers/{ready_id}").json()["server"]
    assert ready["status"] == "ACTIVE"
    # The volume the lost attach held can be attached again.
    assert again.job(attach(again, ready_id, VOLUME_ID)["job_id"])["status"] == "SUCCESS"


def test_a_graceful_stop_lets_running_jobs_end_before_saving(simulator_factory, tmp_path):
    state_file = tmp_path / "sim.json"
    first = simulator_factory(auth=False, job_seconds=(0.3, 0.3), state_file=str(state_file))
    v1 = V1(first)
    job_id = v1.create(name="finishing").json()["job_id"]
    first.stop()  # the job is still running here

    saved = json.loads(state_file.read_text())
    assert [j["status"] for j in saved["jobs"] if j["job_id"] == job_id] == ["SUCCESS"]
    assert [s["status"] for s in saved["servers"]] == ["ACTIVE"]


def test_an_unreadable_state_file_is_refused_with_its_name(simulator_factory, tmp_path):
    state_file = tmp_path / "sim.json"
    state_file.write_text("{not json")
    with pytest.raises(StateFileError, match="sim.json"):
        simulator_factory(auth=False, state_file=str(state_file))
    assert state_file.read_text() == "{not json"  # kept for the operator to look at


def test_the_command_line_option_loads_and_reports_the_file(tmp_path):
    state_file = tmp_path / "sim.json"
    state_file.write_text("[]")
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--port", "0", "--state-file", str(state_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot load the simulator's state from {state_file}" in result.stderr


def test_deleted_servers_stay_visible_then_purge_after_a_reload(simulator_factory, tmp_path):
    state_file = tmp_path / "sim.json"
    first = simulator_factory(auth=False, state_file=str(state_file))
    v1 = V1(first)
    server_id = v1.create_active()
    delete = v1.call("POST", "/baremetalservers/delete", json={"servers": [{"id": server_id}]})
    assert v1.job(delete.json()["job_id"])["status"] == "SUCCESS"
    first.stop()

    clock = FakeClock()
    second = simulator_factory(
        auth=False, clock=clock, deleted_visible_seconds=30, state_file=str(state_file)
    )
    again = V1(second)
    assert again.call("GET", f"/baremetalservers/{server_id}").json()["server"]["status"] == (
        "DELETED"
    )
    clock.advance(31)
    assert again.call("GET", f"/baremetalservers/{server_id}").status_code == 404
    assert volume(again, OTHER_VOLUME)["status"] == "available"


def test_catalog_changes_made_at_run_time_are_kept(simulator_factory, tmp_path):
    state_file = tmp_path / "sim.json"
    first = simulator_factory(auth=False, state_file=str(state_file))
    http = V1(first).session
    sim = first.base_url
    assert http.put(f"{sim}/_sim/limits", json={"maxTotalInstances": 7}, timeout=10).ok
    added = http.post(f"{sim}/_sim/volumes", json={"id": "extra-disk", "name": "x"}, timeout=10)
    assert added.ok, added.text
    first.stop()

    second = simulator_factory(auth=False, state_file=str(state_file))
    again = V1(second)
    limits = again.session.get(f"{second.base_url}/_sim/limits", timeout=10).json()["limits"]
    assert limits["maxTotalInstances"] == 7
    assert volume(again, "extra-disk")["status"] == "available"
