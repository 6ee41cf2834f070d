"""The reads a preflight makes: flavors per zone and limits (BMS v1), and the IMS, VPC and EVS
reads of ``client.resources``, against the simulator over HTTP with both kinds of auth."""

from __future__ import annotations

import pytest

from bms.exceptions import NotFound
from bms.resources import MAX_VOLUME_IDS, sibling_endpoint
from simulator.catalog import DEFAULT_VPC_ID, volume_id

SUBNET_ID = "c1d0e0f0-0000-4000-8000-0000000000b1"
IMAGE_ID = "a3e5c3e0-0000-4000-8000-000000000001"


def test_flavors_per_zone_and_limits(harness):
    harness.cloud.sim("PUT", "flavors/physical.h2.large", {"az_status": {"cn-north-4b": "abandon"}})
    client = harness.client

    everywhere = {f["id"] for f in client.list_flavors()}
    in_b = {f["id"] for f in client.list_flavors("cn-north-4b")}
    limits = client.show_limits()

    assert "physical.h2.large" in everywhere - in_b
    assert limits["maxTotalInstances"] >= 1000 and limits["totalInstancesUsed"] == 0
    assert harness.gate_counts()["list"] == 3


def test_images_vpcs_subnets_and_volumes(harness):
    harness.cloud.sim("PUT", f"volumes/{volume_id(2)}", {"status": "in-use"})
    resources = harness.client.resources

    [image] = resources.list_images(image_id=IMAGE_ID)
    missing_image = resources.list_images(image_id="no-such-image")
    vpc = resources.show_vpc(DEFAULT_VPC_ID)
    subnet = resources.show_subnet(SUBNET_ID)
    volumes = resources.list_volumes([volume_id(1), volume_id(2), "no-such-volume"])

    assert (image["status"], image["virtual_env_type"]) == ("active", "Ironic")
    assert missing_image == []
    assert vpc["id"] == DEFAULT_VPC_ID
    assert (subnet["vpc_id"], subnet["status"]) == (DEFAULT_VPC_ID, "ACTIVE")
    assert {v["id"]: v["status"] for v in volumes} == {
        volume_id(1): "available",
        volume_id(2): "in-use",
    }
    assert harness.gate_counts()["list"] == 5


def test_a_missing_vpc_or_subnet_is_not_found_with_the_vpc_code(harness):
    resources = harness.client.resources

    with pytest.raises(NotFound) as vpc:
        resources.show_vpc("no-such-vpc")
    with pytest.raises(NotFound) as subnet:
        resources.show_subnet("no/such?subnet")

    assert (vpc.value.error_code, subnet.value.error_code) == ("VPC.0003", "VPC.0202")


def test_more_volume_ids_than_one_call_carries_are_refused_before_any_call(harness):
    with pytest.raises(ValueError):
        harness.client.resources.list_volumes([f"v{n}" for n in range(MAX_VOLUME_IDS + 1)])

    assert harness.gate_calls == []


@pytest.mark.parametrize(
    ("endpoint", "service", "expected"),
    [
        (
            "https://bms.cn-north-4.myhuaweicloud.com",
            "vpc",
            "https://vpc.cn-north-4.myhuaweicloud.com",
        ),
        (
            "https://bms.ap-southeast-1.myhuaweicloud.com:443/",
            "evs",
            "https://evs.ap-southeast-1.myhuaweicloud.com:443/",
        ),  # fmt: skip
        ("http://127.0.0.1:8500", "ims", "http://127.0.0.1:8500"),
        ("https://proxy.example.com/bms", "ims", "https://proxy.example.com/bms"),
    ],
)
def test_sibling_endpoints_follow_the_bms_host(endpoint, service, expected):
    assert sibling_endpoint(endpoint, service) == expected
