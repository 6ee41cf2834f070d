"""What a preflight reads: flavors per zone, the account's limits, IMS images, VPCs and
subnets, EVS disks with their status; and the ``/_sim/`` routes that steer them."""

from __future__ import annotations

import pytest
import requests

from tests.simulator.helpers import IMAGE_ID, SUBNET_ID, V1, VOLUME_ID, VPC_ID

LARGE = "physical.h2.large"


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(auth=False)


@pytest.fixture
def v1(sim) -> V1:
    return V1(sim)


def get(sim, path: str, **params) -> requests.Response:
    with requests.Session() as session:
        return session.get(sim.base_url + path, params=params, timeout=10)


def flavor_ids(v1: V1, **params) -> list[str]:
    response = v1.call("GET", "/baremetalservers/flavors", params=params)
    assert response.status_code == 200, response.text
    return sorted(f["id"] for f in response.json()["flavors"])


# -- flavors per availability zone ------------------------------------------------------------


def test_flavors_are_listed_per_zone_with_their_states(sim, v1):
    sim.control.set_flavor(LARGE, az_status={"cn-north-4a": "abandon", "cn-north-4b": "sellout"})

    every = flavor_ids(v1)
    in_a = flavor_ids(v1, availability_zone="cn-north-4a")
    in_b = flavor_ids(v1, availability_zone="cn-north-4b")

    assert LARGE in every and LARGE in in_b
    assert LARGE not in in_a  # abandon: not listed in that zone
    assert flavor_ids(v1, availability_zone="cn-south-9z") == []  # no such zone
    listed = v1.call("GET", "/baremetalservers/flavors").json()["flavors"]
    specs = next(f for f in listed if f["id"] == LARGE)["os_extra_specs"]
    assert specs["cond:operation:az"] == "cn-north-4a(abandon), cn-north-4b(sellout)"


@pytest.mark.parametrize("zone", ["cn-north-4a", "cn-north-4b"])
def test_a_create_of_a_flavor_not_on_sale_in_its_zone_is_refused(sim, v1, zone):
    sim.control.set_flavor(LARGE, az_status={"cn-north-4a": "abandon", "cn-north-4b": "sellout"})

    response = v1.create(flavorRef=LARGE, availability_zone=zone)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BMS.0021"
    assert sim.control.servers() == []


def test_a_flavor_state_for_every_zone_applies_where_no_zone_says_otherwise(sim, v1):
    sim.control.set_flavor(LARGE, status="sellout", az_status={"cn-north-4b": "normal"})

    assert v1.create(flavorRef=LARGE).status_code == 400
    assert v1.create(flavorRef=LARGE, availability_zone="cn-north-4b").status_code == 200


def test_flavor_routes_refuse_unknown_states_and_flavors(sim):
    with requests.Session() as session:
        bad = session.put(f"{sim.base_url}/_sim/flavors/{LARGE}", json={"status": "gone"})
        missing = session.put(f"{sim.base_url}/_sim/flavors/nope", json={"status": "normal"})
        added = session.post(
            f"{sim.base_url}/_sim/flavors",
            json={"id": "physical.x", "vcpus": 8, "ram": 1024, "disk": 10, "az_status": []},
        )
    assert (bad.status_code, missing.status_code, added.status_code) == (400, 404, 400)


# -- limits -----------------------------------------------------------------------------------


def test_limits_are_configurable_and_used_servers_are_counted(simulator_factory):
    sim = simulator_factory(auth=False, limits={"maxTotalInstances": 5})
    v1 = V1(sim)
    v1.create_active(count=2)

    absolute = v1.call("GET", "/baremetalservers/limits").json()["absolute"]

    assert absolute["maxTotalInstances"] == 5
    assert absolute["maxTotalCores"] == 6_400_000  # the default
    assert (absolute["totalInstancesUsed"], absolute["totalCoresUsed"]) == (2, 64)
    assert absolute["totalRAMUsed"] == 2 * 193047
    assert sim.control.set_limits(maxTotalCores=100)["maxTotalCores"] == 100
    sim.control.reset()
    assert sim.control.limits()["maxTotalInstances"] == 5  # the configured value comes back
    assert sim.control.limits()["maxTotalCores"] == 6_400_000


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"maxTotalInstances": 3}, "BMS.0025"),
        ({"maxTotalCores": 100}, "BMS.0026"),
        ({"maxTotalRAMSize": 500000}, "BMS.0027"),
        ({"maxTotalInstances": 3, "maxTotalCores": 100}, "BMS.0028"),
        ({"maxTotalInstances": 3, "maxTotalRAMSize": 500000}, "BMS.0029"),
        ({"maxTotalCores": 100, "maxTotalRAMSize": 500000}, "BMS.0030"),
        ({"maxTotalInstances": 3, "maxTotalCores": 100, "maxTotalRAMSize": 500000}, "BMS.0031"),
    ],
)
def test_a_create_beyond_the_limits_is_refused_naming_them(sim, v1, limits, code):
    sim.control.set_limits(**limits)

    response = v1.create(count=4)  # 4 servers, 128 cores, 772188 MB

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert v1.create(count=2).status_code == 200  # what fits is still made


def test_limit_route_refuses_unknown_and_negative_values(sim):
    with requests.Session() as session:
        unknown = session.put(f"{sim.base_url}/_sim/limits", json={"maxTotalDisks": 1})
        negative = session.put(f"{sim.base_url}/_sim/limits", json={"maxTotalCores": -1})
    assert (unknown.status_code, negative.status_code) == (400, 400)


# -- IMS, VPC, EVS ----------------------------------------------------------------------------


def test_images_are_found_by_id_with_status_and_type(sim):
    sim.control.add_image("img-vm", "Windows VM", virtual_env_type="FusionCompute")
    sim.control.add_image("img-queued", "Half uploaded", status="queued")

    found = get(sim, "/v2/cloudimages", id=IMAGE_ID).json()["images"]
    vm = get(sim, "/v2/cloudimages", id="img-vm").json()["images"]
    queued = get(sim, "/v2/cloudimages", id="img-queued").json()["images"]

    assert [(i["id"], i["status"], i["virtual_env_type"]) for i in found] == [
        (IMAGE_ID, "active", "Ironic")
    ]
    assert found[0]["__os_type"] == "Linux"
    assert vm[0]["virtual_env_type"] == "FusionCompute"
    assert queued[0]["status"] == "queued"
    assert get(sim, "/v2/cloudimages", id="no-such-image").json() == {"images": []}


def test_vpcs_and_subnets_are_shown_or_404_in_the_vpc_shape(sim):
    sim.control.add_subnet("sub-broken", "10.9.0.0/24", vpc_id="vpc-other", status="ERROR")
    project = sim.project_id

    vpc = get(sim, f"/v1/{project}/vpcs/{VPC_ID}")
    other = get(sim, f"/v1/{project}/vpcs/vpc-other")
    subnet = get(sim, f"/v1/{project}/subnets/{SUBNET_ID}")
    broken = get(sim, f"/v1/{project}/subnets/sub-broken")
    no_vpc = get(sim, f"/v1/{project}/vpcs/no-such-vpc")
    no_subnet = get(sim, f"/v1/{project}/subnets/no-such-subnet")

    assert (vpc.json()["vpc"]["id"], vpc.json()["vpc"]["status"]) == (VPC_ID, "OK")
    assert other.status_code == 200
    assert subnet.json()["subnet"]["vpc_id"] == VPC_ID
    assert subnet.json()["subnet"]["status"] == "ACTIVE"
    assert broken.json()["subnet"]["status"] == "ERROR"
    assert (no_vpc.status_code, no_vpc.json()["code"]) == (404, "VPC.0003")
    assert (no_subnet.status_code, no_subnet.json()["code"]) == (404, "VPC.0202")


def test_volumes_are_listed_by_ids_with_status_and_attachments(sim, v1):
    server_id = v1.create_active()
    job = v1.call(
        "POST",
        f"/baremetalservers/{server_id}/attachvolume",
        json={"volumeAttachment": {"volumeId": VOLUME_ID}},
    ).json()["job_id"]
    assert v1.job(job)["status"] == "SUCCESS"
    second = "e5e5e5e5-0000-4000-8000-000000000002"
    sim.control.set_volume(second, status="error")
    path = f"/v2/{sim.project_id}/cloudvolumes/detail"

    answer = get(sim, path, ids=f"['{VOLUME_ID}','{second}','no-such-volume']").json()

    assert answer["count"] == 2
    by_id = {v["id"]: v for v in answer["volumes"]}
    assert by_id[VOLUME_ID]["status"] == "in-use"
    assert by_id[VOLUME_ID]["attachments"][0]["server_id"] == server_id
    assert (by_id[second]["status"], by_id[second]["attachments"]) == ("error", [])
    assert get(sim, path, limit="5").json()["count"] == 200
    assert len(get(sim, path, limit="5").json()["volumes"]) == 5


def test_more_than_sixty_volume_ids_are_refused(sim):
    ids = "[" + ",".join(f"'v{n}'" for n in range(61)) + "]"

    response = get(sim, f"/v2/{sim.project_id}/cloudvolumes/detail", ids=ids)

    assert response.status_code == 400


def test_volume_route_changes_status_and_refuses_unknown_ones(sim):
    with requests.Session() as session:
        changed = session.put(
            f"{sim.base_url}/_sim/volumes/{VOLUME_ID}",
            json={"status": "in-use", "multiattach": True},
        )
        bad = session.put(f"{sim.base_url}/_sim/volumes/{VOLUME_ID}", json={"status": "lost"})
        missing = session.put(f"{sim.base_url}/_sim/volumes/nope", json={"status": "error"})
    assert changed.json()["volume"]["status"] == "in-use"
    assert changed.json()["volume"]["multiattach"] is True
    assert (bad.status_code, missing.status_code) == (400, 404)


def test_the_reads_count_as_list_calls(sim):
    get(sim, "/v2/cloudimages", id=IMAGE_ID)
    get(sim, f"/v1/{sim.project_id}/vpcs/{VPC_ID}")
    get(sim, f"/v1/{sim.project_id}/subnets/{SUBNET_ID}")
    get(sim, f"/v2/{sim.project_id}/cloudvolumes/detail")

    assert sim.control.counters()["list"]["calls"] == 4
