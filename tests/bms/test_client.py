"""Every BMS v1 method of :class:`bms.client.BmsClient` against the simulator over HTTP, with
AK/SK and with token auth (the ``harness`` fixture runs each test with both)."""

from __future__ import annotations

import pytest

from bms.auth import AkSkAuth
from bms.client import BmsClient
from bms.exceptions import (
    AuthenticationError,
    BadRequest,
    CloudConnectionError,
    NotFound,
    ServerError,
    Throttled,
)
from bms.jobs import JobOutcome
from simulator.catalog import DEFAULT_VPC_ID, DEMO_KEY_NAME, volume_id

SUBNET_ID = "c1d0e0f0-0000-4000-8000-0000000000b1"
IMAGE_ID = "a3e5c3e0-0000-4000-8000-000000000001"


def server_spec(name: str = "bms-test", count: int = 1, **changes) -> dict:
    spec = {
        "imageRef": IMAGE_ID,
        "flavorRef": "physical.o2.medium",
        "name": name,
        "metadata": {"op_svc_userid": "u-1"},
        "nics": [{"subnet_id": SUBNET_ID}],
        "availability_zone": "cn-north-4a",
        "vpcid": DEFAULT_VPC_ID,
        "extendparam": {"chargingMode": "postPaid"},
        "key_name": DEMO_KEY_NAME,
        "count": count,
    }
    spec.update(changes)
    return spec


def create_active(harness, name="bms-test", count=1) -> list[str]:
    result = harness.client.create_servers(server_spec(name, count))
    job = harness.wait_job(result.job_id)
    assert job.outcome is JobOutcome.DONE
    return job.server_ids


def test_create_poll_show_rename_list(harness):
    client = harness.client
    result = client.create_servers(server_spec("bms-a", count=2))
    assert result.order_id is None and len(result.job_id) >= 32

    job = harness.wait_job(result.job_id)
    assert job.outcome is JobOutcome.DONE
    assert job.job_type == "baremetalBatchCreate"
    assert len(job.sub_jobs) == 2 and len(job.server_ids) == 2

    server = client.show_server(job.server_ids[0])
    assert server["id"] == job.server_ids[0]
    assert server["status"] == "ACTIVE"
    assert server["name"].startswith("bms-a-")

    renamed = client.rename_server(server["id"], "bms-renamed")
    assert renamed["name"] == "bms-renamed"
    assert client.show_server(server["id"])["name"] == "bms-renamed"

    page = client.list_servers(name="bms-a")
    assert [s["id"] for s in page.servers] == [job.server_ids[1]]
    assert page.count == 1
    everything = client.list_servers(status="ACTIVE", tags="__type_baremetal", limit=1, offset=2)
    assert everything.count == 2 and len(everything.servers) == 1


def test_prepaid_create_returns_an_order_id(harness):
    extend = {"chargingMode": "prePaid", "periodType": "month", "periodNum": 1,
              "isAutoPay": "true"}  # fmt: skip
    result = harness.client.create_servers(server_spec(extendparam=extend))
    assert result.order_id and result.job_id


def test_attach_list_detach_volume(harness):
    client = harness.client
    (server_id,) = create_active(harness)
    volume = volume_id(7)

    job = harness.wait_job(client.attach_volume(server_id, volume, device="/dev/sdb"))
    assert job.outcome is JobOutcome.DONE
    attachments = client.list_volume_attachments(server_id)
    assert [(a["volumeId"], a["device"]) for a in attachments] == [(volume, "/dev/sdb")]

    job = harness.wait_job(client.detach_volume(server_id, attachments[0]["id"]))
    assert job.outcome is JobOutcome.DONE
    assert client.list_volume_attachments(server_id) == []


def test_a_disks_status_tells_a_running_attach_from_a_finished_one(harness):
    client = harness.client
    (server_id,) = create_active(harness)
    volume = volume_id(8)
    assert client.resources.show_volume(volume)["status"] == "available"

    job_id = client.attach_volume(server_id, volume)
    during = client.resources.show_volume(volume)
    assert during["status"] == "attaching"  # while the attachment list already shows it
    assert [a["volumeId"] for a in client.list_volume_attachments(server_id)] == [volume]
    assert [a["server_id"] for a in during["attachments"]] == [server_id]

    harness.wait_job(job_id)
    assert client.resources.show_volume(volume)["status"] == "in-use"
    with pytest.raises(NotFound):
        client.resources.show_volume("00000000-0000-4000-8000-00000000dead")


def test_batch_power_actions_and_delete(harness):
    client = harness.client
    server_ids = create_active(harness, count=2)

    assert harness.wait_job(client.batch_action("os-stop", server_ids)).outcome is JobOutcome.DONE
    assert {client.show_server(i)["status"] for i in server_ids} == {"SHUTOFF"}
    assert harness.wait_job(client.batch_action("os-start", server_ids)).outcome is JobOutcome.DONE
    assert {client.show_server(i)["status"] for i in server_ids} == {"ACTIVE"}
    job = harness.wait_job(client.batch_action("reboot", server_ids[:1], type="HARD"))
    assert job.outcome is JobOutcome.DONE

    job = harness.wait_job(client.delete_servers(server_ids, delete_volume=True))
    assert job.outcome is JobOutcome.DONE
    assert {client.show_server(i)["status"] for i in server_ids} == {"DELETED"}
    assert client.list_servers().count == 0


def test_every_call_passes_the_gate_with_the_simulators_api_class(harness):
    client = harness.client
    (server_id,) = create_active(harness)
    client.show_server(server_id)
    client.list_servers()
    client.rename_server(server_id, "renamed")
    harness.wait_job(client.attach_volume(server_id, volume_id(1)))
    harness.wait_job(client.detach_volume(server_id, volume_id(1)))
    client.list_volume_attachments(server_id)
    harness.wait_job(client.batch_action("os-stop", [server_id]))
    harness.wait_job(client.delete_servers([server_id]))
    client.nova.list_flavors()

    counted = {name: calls for name, calls in harness.cloud.counters().items() if calls}
    assert counted == dict(harness.gate_counts())
    assert set(counted) == {"create", "show", "update", "attach", "detach", "job", "list", "nova"}


def test_errors_arrive_typed_with_the_cloud_code(harness):
    client = harness.client
    with pytest.raises(NotFound) as caught:
        client.show_server("00000000-0000-0000-0000-000000000000")
    assert caught.value.error_code == "BMS.0040"
    assert caught.value.request_id and caught.value.method == "GET"

    with pytest.raises(NotFound):
        client.show_job("ffffffffffffffffffffffffffffffff")

    with pytest.raises(BadRequest) as caught:
        client.create_servers(server_spec(flavorRef="physical.nope"))
    assert caught.value.error_code == "BMS.0008"

    (server_id,) = create_active(harness)
    with pytest.raises(BadRequest) as caught:
        client.detach_volume(server_id, volume_id(3))
    assert caught.value.error_code == "BMS.0114"


def test_quota_exhaustion_raises_throttled_with_the_gateway_code(harness):
    harness.cloud.sim("PUT", "quotas", {"spec": "show=2/minute"})
    for _ in range(2):
        with pytest.raises(NotFound):
            harness.client.show_server("missing")
    with pytest.raises(Throttled) as caught:
        harness.client.show_server("missing")
    assert caught.value.error_code == "APIGW.0308"
    assert caught.value.status_code == 429
    assert caught.value.transient
    assert harness.gate_counts()["show"] == 3, "a 429 is not retried by the client"


def test_a_create_answered_by_a_dropped_connection_is_not_resent(harness):
    harness.cloud.sim("PUT", "faults", {"drop_share": 1.0})
    with pytest.raises(CloudConnectionError) as caught:
        harness.client.create_servers(server_spec("bms-dropped"))
    assert caught.value.outcome_unknown
    assert caught.value.method == "POST"
    harness.cloud.sim("PUT", "faults", {"drop_share": 0.0})

    assert harness.cloud.counters()["create"] == 1
    assert harness.gate_calls == ["create"]
    harness.settle()
    created = [s for s in harness.cloud.servers() if s["name"] == "bms-dropped"]
    assert len(created) == 1, "the dropped create took effect exactly once"


def test_a_get_meeting_5xx_is_retried_then_raised(harness):
    harness.cloud.sim("PUT", "faults", {"http_503_share": 1.0})
    with pytest.raises(ServerError) as caught:
        harness.client.list_servers()
    assert caught.value.status_code == 503
    assert harness.cloud.counters()["list"] == 3
    assert harness.gate_calls == ["list"] * 3


def test_a_post_meeting_5xx_is_not_retried(harness):
    harness.cloud.sim("PUT", "faults", {"http_500_share": 1.0})
    with pytest.raises(ServerError):
        harness.client.create_servers(server_spec())
    assert harness.cloud.counters()["create"] == 1


def test_a_wrong_secret_key_is_refused_with_apigw_0301(cloud):
    server = cloud.server
    auth = AkSkAuth(server.ak, "WRONG" + server.sk[5:], server.project_id, clock=cloud.clock.now)
    client = BmsClient(cloud.base_url, server.project_id, auth)
    with client, pytest.raises(AuthenticationError) as caught:
        client.list_servers()
    assert caught.value.error_code == "APIGW.0301"
    assert server.sk[5:] not in str(caught.value)


def test_odd_characters_in_query_and_path_are_signed_as_the_server_reads_them(harness):
    page = harness.client.list_servers(name="nö match ~+&=%", tags="a b,c")
    assert (page.servers, page.count) == ([], 0)
    with pytest.raises(NotFound) as caught:
        harness.client.show_server("id with spaces/and ü~")
    assert caught.value.error_code == "BMS.0040"
