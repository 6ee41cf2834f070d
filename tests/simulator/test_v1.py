"""The BMS v1 API over plain HTTP: validation, naming, listing, lifecycle, volumes, tags."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from simulator import FakeClock
from tests.simulator.helpers import V1, VOLUME_ID


@pytest.fixture
def v1(simulator_factory) -> V1:
    return V1(simulator_factory(auth=False))


@pytest.fixture
def clocked(simulator_factory):
    return simulator_factory(
        auth=False, clock=FakeClock(), job_seconds=(1.0, 1.0), deleted_visible_seconds=30
    )


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"flavorRef": "physical.nope"}, "BMS.0008"),
        ({"imageRef": "00000000-0000-0000-0000-000000000000"}, "BMS.0010"),
        ({"nics": [{"subnet_id": "no-such-subnet"}]}, "BMS.0015"),
        ({"key_name": None}, "BMS.0111"),
        ({"adminPass": "Secret-Pass-123"}, "BMS.0111"),
        ({"key_name": "no-such-key"}, "BMS.0049"),
        ({"count": 101}, "BMS.0205"),
        ({"name": "bad name!"}, "BMS.0206"),
        ({"name": "x" * 60, "count": 2}, "BMS.0206"),
        ({"vpcid": "no-such-vpc"}, "BMS.0246"),
        ({"flavorRef": ["physical.o2.medium"]}, "BMS.0008"),
        ({"vpcid": {"id": "x"}}, "BMS.0246"),
        ({"nics": [{"subnet_id": ["x"]}]}, "BMS.0015"),
        ({"extendparam": "postPaid"}, "BMS.0022"),
        ({"metadata": {"k": 1}}, "BMS.0217"),
    ],
)
def test_create_refuses_what_the_catalog_does_not_hold(v1, overrides, code):
    response = v1.create(**overrides)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_a_batch_makes_one_sub_job_per_server_with_numbered_names(v1):
    response = v1.create(name="batch", count=3, server_tags=[{"key": "team", "value": "a"}])
    job = v1.job(response.json()["job_id"])

    assert set(response.json()) == {"job_id"}
    assert job["entities"]["sub_jobs_total"] == 3
    assert {sub["job_type"] for sub in job["entities"]["sub_jobs"]} == {"baremetalSingleCreate"}
    names = [v1.call("GET", f"/baremetalservers/{i}").json()["server"] for i in v1.server_ids(job)]
    assert sorted(s["name"] for s in names) == ["batch-0000", "batch-0001", "batch-0002"]
    first = names[0]
    assert first["tags"] == ["__type_baremetal", "team=a"]
    assert first["metadata"]["op_svc_userid"] == "user-1"
    assert first["metadata"]["metering.resourcetype"] == "hws.resource.type.pm"
    assert first["addresses"]["c1d0e0f0-0000-4000-8000-0000000000a1"][0]["addr"].startswith(
        "192.168.1."
    )
    assert len({s["addresses"][s["metadata"]["vpc_id"]][0]["addr"] for s in names}) == 3


def test_prepaid_with_auto_pay_answers_an_order_and_a_job(v1):
    extend = {"chargingMode": "prePaid", "periodType": "month", "periodNum": 1, "isAutoPay": "true"}
    response = v1.create(extendparam=extend)

    assert set(response.json()) == {"order_id", "job_id"}
    assert v1.job(response.json()["job_id"])["status"] == "SUCCESS"


def test_prepaid_without_auto_pay_waits_for_payment(v1):
    response = v1.create(extendparam={"chargingMode": "prePaid", "isAutoPay": "false"})

    assert v1.job(response.json()["job_id"])["status"] == "PENDING_PAYMENT"


def test_a_server_is_built_then_active_as_its_job_runs(clocked):
    v1 = V1(clocked)
    job_id = v1.create().json()["job_id"]

    job = v1.job(job_id)
    assert job["status"] == "INIT"
    assert job["entities"]["sub_jobs"][0]["entities"] == {}
    clocked.clock.advance(0.5)
    job = v1.job(job_id)
    assert (job["status"], job["end_time"]) == ("RUNNING", None)
    server_id = v1.server_ids(job)[0]
    building = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert (building["status"], building["OS-EXT-STS:task_state"]) == ("BUILD", "scheduling")
    clocked.clock.advance(0.5)
    job = v1.job(job_id)
    assert job["status"] == "SUCCESS"
    assert job["end_time"].endswith("Z") and len(job["end_time"]) == len("2019-04-25T20:04:47.591Z")
    server = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert (server["status"], server["OS-EXT-STS:power_state"]) == ("ACTIVE", 1)


def test_a_deleted_server_answers_deleted_then_404(clocked):
    v1 = V1(clocked)
    job_id = v1.create().json()["job_id"]
    clocked.clock.advance(1)
    server_id = v1.server_ids(v1.job(job_id))[0]
    v1.call(
        "POST",
        f"/baremetalservers/{server_id}/attachvolume",
        json={"volumeAttachment": {"volumeId": VOLUME_ID}},
    )
    clocked.clock.advance(1)

    delete = v1.call("POST", "/baremetalservers/delete", json={"servers": [{"id": server_id}]})
    assert delete.status_code == 200
    clocked.clock.advance(0.5)
    deleting = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert (deleting["status"], deleting["OS-EXT-STS:task_state"]) == ("ACTIVE", "deleting")
    clocked.clock.advance(0.5)
    assert v1.job(delete.json()["job_id"])["status"] == "SUCCESS"
    gone = v1.call("GET", f"/baremetalservers/{server_id}")
    assert (gone.status_code, gone.json()["server"]["status"]) == (200, "DELETED")
    assert v1.call("GET", "/baremetalservers/detail").json()["count"] == 0
    volume = next(v for v in clocked.control.volumes() if v["id"] == VOLUME_ID)
    assert volume["status"] == "available"
    clocked.clock.advance(30)
    assert v1.call("GET", f"/baremetalservers/{server_id}").status_code == 404
    history = [h["status"] for h in clocked.control.server(server_id)["history"]]
    assert history == ["BUILD", "ACTIVE", "ACTIVE", "DELETED"]


def test_list_filters_by_name_status_and_tags_and_pages(v1):
    for name in ("web", "db"):
        v1.create(name=name, count=3, server_tags=[{"key": "role", "value": name}])

    def listed(**params):
        return v1.call("GET", "/baremetalservers/detail", params=params).json()

    assert listed(name="web")["count"] == 3
    assert listed(tags="role=db")["count"] == 3
    assert listed(status="ACTIVE")["count"] == 6
    assert listed(status="SHUTOFF")["count"] == 0
    page = listed(limit=4, offset=2)
    assert (page["count"], len(page["servers"])) == (6, 2)
    assert v1.call("GET", "/baremetalservers/detail", params={"limit": 0}).status_code == 400
    slim = v1.session.get(
        v1.base.replace("/v1/", "/v1.1/") + "/baremetalservers/detail",
        params={"name": "db"},
        timeout=10,
    ).json()
    assert sorted(s["name"] for s in slim["servers"]) == ["db-0000", "db-0001", "db-0002"]
    assert set(slim["servers"][0]) >= {"id", "status", "task_state", "in_recycle_bin"}


def test_rename_changes_the_name_only(v1):
    server_id = v1.create_active()

    response = v1.call("PUT", f"/baremetalservers/{server_id}", json={"server": {"name": "new"}})

    assert response.status_code == 200
    assert response.json()["server"]["name"] == "new"
    assert response.json()["server"]["OS-EXT-SRV-ATTR:hostname"] == "new"
    refused = v1.call("PUT", f"/baremetalservers/{server_id}", json={"server": {"name": ""}})
    assert refused.json()["error"]["code"] == "BMS.0219"


def test_attach_assigns_devices_and_refuses_unknown_or_busy_volumes(v1):
    server_id = v1.create_active()

    def attach(volume_id, device=None):
        body = {"volumeAttachment": {"volumeId": volume_id, "device": device}}
        return v1.call("POST", f"/baremetalservers/{server_id}/attachvolume", json=body)

    first = attach(VOLUME_ID)
    assert first.status_code == 202
    assert v1.job(first.json()["job_id"])["job_type"] == "baremetalAttachVolume"
    attach("e5e5e5e5-0000-4000-8000-000000000002")
    devices = v1.call("GET", f"/baremetalservers/{server_id}/os-volume_attachments").json()
    assert [a["device"] for a in devices["volumeAttachments"]] == ["/dev/sdb", "/dev/sdc"]
    assert attach(VOLUME_ID).json()["error"]["code"] == "BMS.0103"
    third = "e5e5e5e5-0000-4000-8000-000000000003"
    assert attach(third, "/dev/sdb").json()["error"]["code"] == "BMS.0104"
    assert attach(third, "/dev/sda").json()["error"]["code"] == "BMS.0022"
    assert attach("e5e5e5e5-0000-4000-8000-999999999999").json()["error"]["code"] == "BMS.1003"
    not_attached = v1.call(
        "DELETE", f"/baremetalservers/{server_id}/detachvolume/e5e5e5e5-0000-4000-8000-000000000003"
    )
    assert not_attached.json()["error"]["code"] == "BMS.0114"


def test_attach_needs_an_active_or_stopped_server(clocked):
    v1 = V1(clocked)
    job = v1.job(v1.create().json()["job_id"])
    clocked.clock.advance(0.5)
    server_id = v1.server_ids(v1.job(job["job_id"]))[0]

    body = {"volumeAttachment": {"volumeId": VOLUME_ID}}
    response = v1.call("POST", f"/baremetalservers/{server_id}/attachvolume", json=body)

    assert response.json()["error"]["code"] == "BMS.1001"


def test_power_actions_move_status_through_their_tasks(clocked):
    v1 = V1(clocked)
    job_id = v1.create().json()["job_id"]
    clocked.clock.advance(1)
    server_id = v1.server_ids(v1.job(job_id))[0]
    servers = {"servers": [{"id": server_id}]}

    def status():
        server = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
        return server["status"], server["OS-EXT-STS:task_state"]

    stop = v1.call(
        "POST", "/baremetalservers/action", json={"os-stop": {"type": "HARD", **servers}}
    )
    assert v1.job(stop.json()["job_id"])["job_type"] == "baremetalBatchOperate"
    clocked.clock.advance(0.5)
    assert status() == ("ACTIVE", "powering-off")
    clocked.clock.advance(0.5)
    assert status() == ("SHUTOFF", None)
    again = v1.call("POST", "/baremetalservers/action", json={"os-stop": servers})
    assert again.json()["error"]["code"] == "BMS.0039"
    v1.call("POST", "/baremetalservers/action", json={"os-start": servers})
    clocked.clock.advance(1)
    assert status() == ("ACTIVE", None)
    v1.call("POST", "/baremetalservers/action", json={"reboot": {"type": "HARD", **servers}})
    clocked.clock.advance(0.5)
    assert status() == ("HARD_REBOOT", "reboot_started_hard")


def test_v1_tags_and_metadata_merge(v1):
    server_id = v1.create_active()
    tags_url = f"/baremetalservers/{server_id}/tags"

    created = v1.call(
        "POST",
        tags_url + "/action",
        json={"action": "create", "tags": [{"key": "k", "value": "v"}]},
    )
    assert created.status_code == 204
    assert v1.call("GET", tags_url).json() == {"tags": [{"key": "k", "value": "v"}]}
    v1.call("POST", tags_url + "/action", json={"action": "delete", "tags": [{"key": "k"}]})
    assert v1.call("GET", tags_url).json() == {"tags": []}
    merged = v1.call(
        "POST", f"/baremetalservers/{server_id}/metadata", json={"metadata": {"request": "r-1"}}
    )
    assert merged.json()["metadata"]["request"] == "r-1"
    assert merged.json()["metadata"]["op_svc_userid"] == "user-1"


def test_flavors_limits_and_interfaces(v1):
    server_id = v1.create_active()

    flavors = v1.call("GET", "/baremetalservers/flavors").json()["flavors"]
    limits = v1.call("GET", "/baremetalservers/limits").json()["absolute"]
    interfaces = v1.call("GET", f"/baremetalservers/{server_id}/os-interface").json()

    medium = next(f for f in flavors if f["id"] == "physical.o2.medium")
    assert medium["vcpus"] == "32"
    assert medium["os_extra_specs"]["resource_type"] == "ironic"
    assert (limits["totalInstancesUsed"], limits["totalCoresUsed"]) == (1, 32)
    assert len(limits) == 19
    assert interfaces["interfaceAttachments"][0]["fixed_ips"][0]["ip_address"] == "192.168.1.10"


def test_unknown_server_and_job_answer_404(v1):
    assert v1.call("GET", "/baremetalservers/no-such-server").status_code == 404
    assert v1.call("GET", "/jobs/0000").status_code == 404


def test_a_fixed_ip_is_honoured_for_one_server_only(v1):
    nic = {"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1", "ip_address": "192.168.1.77"}

    server_id = v1.create_active(nics=[nic])
    taken = v1.create(nics=[nic])
    batch = v1.create(nics=[{**nic, "ip_address": "192.168.1.78"}], count=2)

    server = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert server["addresses"]["c1d0e0f0-0000-4000-8000-0000000000a1"][0]["addr"] == (
        "192.168.1.77"
    )
    assert taken.json()["error"]["code"] == "BMS.0014"
    assert batch.json()["error"]["code"] == "BMS.0207"


def test_a_server_deleted_while_building_stays_deleted(clocked):
    v1 = V1(clocked)
    create_job = v1.create().json()["job_id"]
    clocked.clock.advance(0.2)
    server_id = v1.server_ids(v1.job(create_job))[0]

    delete = v1.call("POST", "/baremetalservers/delete", json={"servers": [{"id": server_id}]})
    clocked.clock.advance(2)

    assert v1.job(delete.json()["job_id"])["status"] == "SUCCESS"
    server = v1.call("GET", f"/baremetalservers/{server_id}").json()["server"]
    assert server["status"] == "DELETED"


def test_history_is_stamped_when_changes_happened_not_when_read(clocked):
    v1 = V1(clocked)
    job_id = v1.create().json()["job_id"]
    clocked.clock.advance(10)
    server_id = v1.server_ids(v1.job(job_id))[0]

    build, active = clocked.control.server(server_id)["history"]

    started = clocked.clock.now() - timedelta(seconds=10)
    tolerance = timedelta(milliseconds=1)
    assert abs(datetime.fromisoformat(build["at"]) - started - timedelta(seconds=0.1)) < tolerance
    assert abs(datetime.fromisoformat(active["at"]) - started - timedelta(seconds=1)) < tolerance
