"""The official ``huaweicloudsdkbms`` client, signing with AK/SK, runs its scenario green."""

from __future__ import annotations

import pytest
from huaweicloudsdkbms.v1 import (
    AttachBaremetalServerVolumeRequest,
    AttachVolumeBody,
    BmsClient,
    ChangeBaremetalNameBody,
    ChangeBaremetalNameServer,
    ChangeBaremetalServerNameRequest,
    CreateBaremetalServersBody,
    CreateBareMetalServersRequest,
    CreateServers,
    DetachBaremetalServerVolumeRequest,
    ExtendParam,
    ListBaremetalFlavorDetailExtendsRequest,
    ListBareMetalServerDetailsRequest,
    ListBareMetalServersRequest,
    MetaDataInfo,
    Nics,
    ShowBaremetalServerVolumeInfoRequest,
    ShowJobInfosRequest,
    ShowTenantQuotaRequest,
    VolumeAttachment,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig

from tests.simulator.helpers import FLAVOR_ID, IMAGE_ID, SUBNET_ID, VOLUME_ID, VPC_ID


def bms_client(simulator, ak: str | None = None, sk: str | None = None) -> BmsClient:
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    config.timeout = (5, 10)
    credentials = BasicCredentials(ak or simulator.ak, sk or simulator.sk, simulator.project_id)
    builder = BmsClient.new_builder().with_http_config(config).with_credentials(credentials)
    return builder.with_endpoint(simulator.base_url).build()


def wait_for_job(client: BmsClient, simulator, job_id: str) -> object:
    """Poll ShowJobInfos, moving the fake clock instead of sleeping."""
    for _ in range(20):
        job = client.show_job_infos(ShowJobInfosRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        simulator.clock.advance(0.5)
    pytest.fail(f"job {job_id} did not finish")


def create_request(name: str) -> CreateBareMetalServersRequest:
    server = CreateServers(
        image_ref=IMAGE_ID,
        flavor_ref=FLAVOR_ID,
        name=name,
        metadata=MetaDataInfo(op_svc_userid="user-1"),
        nics=[Nics(subnet_id=SUBNET_ID)],
        availability_zone="cn-north-4a",
        vpcid=VPC_ID,
        extendparam=ExtendParam(charging_mode="postPaid"),
        key_name="demo-key",
    )
    return CreateBareMetalServersRequest(body=CreateBaremetalServersBody(server=server))


@pytest.fixture
def clocked(simulator_factory):
    from simulator import FakeClock

    return simulator_factory(clock=FakeClock(), job_seconds=(1.0, 2.0))


def test_the_official_client_runs_the_full_scenario(clocked):
    client = bms_client(clocked)

    created = client.create_bare_metal_servers(create_request("sdk-bms"))
    job = wait_for_job(client, clocked, created.job_id)
    assert job.status == "SUCCESS"
    assert job.job_type == "baremetalBatchCreate"
    server_id = job.entities.sub_jobs[0].entities.server_id

    shown = client.list_bare_metal_server_details(
        ListBareMetalServerDetailsRequest(server_id=server_id)
    )
    assert (shown.server.name, shown.server.status) == ("sdk-bms", "ACTIVE")
    assert "__type_baremetal" in shown.server.tags

    renamed = client.change_baremetal_server_name(
        ChangeBaremetalServerNameRequest(
            server_id=server_id,
            body=ChangeBaremetalNameBody(server=ChangeBaremetalNameServer(name="sdk-renamed")),
        )
    )
    assert renamed.server.name == "sdk-renamed"

    attach = client.attach_baremetal_server_volume(
        AttachBaremetalServerVolumeRequest(
            server_id=server_id,
            body=AttachVolumeBody(volume_attachment=VolumeAttachment(volume_id=VOLUME_ID)),
        )
    )
    assert wait_for_job(client, clocked, attach.job_id).status == "SUCCESS"
    attachments = client.show_baremetal_server_volume_info(
        ShowBaremetalServerVolumeInfoRequest(server_id=server_id)
    ).volume_attachments
    assert [(a.volume_id, a.device) for a in attachments] == [(VOLUME_ID, "/dev/sdb")]

    detach = client.detach_baremetal_server_volume(
        DetachBaremetalServerVolumeRequest(server_id=server_id, attachment_id=VOLUME_ID)
    )
    assert wait_for_job(client, clocked, detach.job_id).status == "SUCCESS"
    assert clocked.control.server(server_id)["volumes"] == []

    listed = client.list_bare_metal_servers(ListBareMetalServersRequest(name="sdk-"))
    assert listed.count == 1
    assert listed.servers[0].id == server_id


def test_the_official_client_sees_a_wrong_secret_key_refused(simulator):
    client = bms_client(simulator, sk="WRONG" + simulator.sk[5:])

    with pytest.raises(ClientRequestException) as raised:
        client.create_bare_metal_servers(create_request("sdk-bad"))

    assert raised.value.status_code == 401
    assert raised.value.error_code == "APIGW.0301"
    assert len(raised.value.request_id) == 32
    assert simulator.control.servers() == []


def test_the_official_client_reads_flavors_per_zone_and_the_limits(simulator):
    simulator.control.set_flavor("physical.h2.large", az_status={"cn-north-4b": "sellout"})
    simulator.control.set_limits(maxTotalInstances=40)
    client = bms_client(simulator)

    flavors = client.list_baremetal_flavor_detail_extends(
        ListBaremetalFlavorDetailExtendsRequest(availability_zone="cn-north-4b")
    ).flavors
    quota = client.show_tenant_quota(ShowTenantQuotaRequest()).absolute

    large = next(f for f in flavors if f.id == "physical.h2.large")
    assert large.vcpus == "64"
    assert large.os_extra_specs.condoperationaz == "cn-north-4b(sellout)"
    assert large.os_extra_specs.resource_type == "ironic"
    assert (quota.max_total_instances, quota.total_instances_used) == (40, 0)
    assert quota.max_total_cores == 6_400_000
