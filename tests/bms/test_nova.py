"""Every native v2.1 method of :class:`bms.nova.NovaClient` against the simulator over HTTP,
with AK/SK and with token auth (the ``harness`` fixture runs each test with both)."""

from __future__ import annotations

import pytest

from bms.exceptions import BadRequest, Conflict, NotFound
from simulator.catalog import DEMO_KEY_NAME, DEMO_PUBLIC_KEY, volume_id

SUBNET_ID = "c1d0e0f0-0000-4000-8000-0000000000b1"
IMAGE_ID = "a3e5c3e0-0000-4000-8000-000000000001"
BAREMETAL_TAG = "__type_baremetal"


def nova_spec(name="nova-bms") -> dict:
    return {
        "imageRef": IMAGE_ID,
        "flavorRef": "physical.o2.medium",
        "name": name,
        "availability_zone": "cn-north-4a",
        "networks": [{"uuid": SUBNET_ID}],
        "key_name": DEMO_KEY_NAME,
        "metadata": {"request_id": "r-1"},
    }


def create_active(harness, name="nova-bms") -> str:
    created = harness.client.nova.create_server(nova_spec(name))
    harness.settle()
    assert harness.client.nova.show_server(created["id"])["status"] == "ACTIVE"
    return created["id"]


def test_create_show_list_delete_server(harness):
    nova = harness.client.nova
    created = nova.create_server(nova_spec("nova-a"))
    assert created["id"] and created["links"]
    harness.settle()

    shown = nova.show_server(created["id"])
    assert (shown["id"], shown["name"], shown["status"]) == (created["id"], "nova-a", "ACTIVE")
    assert [s["id"] for s in nova.list_servers(name="nova-a")] == [created["id"]]
    slim = nova.list_servers(detail=False, status="ACTIVE", limit=5)
    assert slim == [{"id": created["id"], "name": "nova-a", "links": slim[0]["links"]}]

    nova.delete_server(created["id"])
    harness.settle()
    assert nova.list_servers(name="nova-a") == []
    assert len(harness.cloud.servers()) == 1
    assert harness.cloud.servers()[0]["status"] == "DELETED"


def test_power_actions(harness):
    nova = harness.client.nova
    server_id = create_active(harness)
    nova.stop_server(server_id)
    harness.settle()
    assert nova.show_server(server_id)["status"] == "SHUTOFF"
    with pytest.raises(Conflict) as caught:
        nova.stop_server(server_id)
    assert caught.value.error_code == "conflictingRequest"
    nova.start_server(server_id)
    harness.settle()
    assert nova.show_server(server_id)["status"] == "ACTIVE"
    nova.reboot_server(server_id)
    harness.settle()
    assert nova.show_server(server_id)["status"] == "ACTIVE"
    (record,) = harness.cloud.servers()
    assert [h["status"] for h in record["history"]][-2:] == ["HARD_REBOOT", "ACTIVE"]


def test_ips_and_interfaces(harness):
    nova = harness.client.nova
    server_id = create_active(harness)
    addresses = nova.list_ips(server_id)
    (network,) = addresses.values()
    assert network[0]["version"] == 4 and network[0]["addr"].startswith("192.168.1.")

    interfaces = nova.list_interfaces(server_id)
    assert len(interfaces) == 1
    port_id = interfaces[0]["port_id"]
    assert nova.show_interface(server_id, port_id)["port_id"] == port_id
    with pytest.raises(NotFound):
        nova.show_interface(server_id, "no-such-port")


def test_flavors(harness):
    nova = harness.client.nova
    detailed = nova.list_flavors()
    assert "physical.o2.medium" in {f["id"] for f in detailed}
    assert all("vcpus" in f for f in detailed)
    assert {f["id"] for f in nova.list_flavors(detail=False)} == {f["id"] for f in detailed}
    assert nova.show_flavor("physical.o2.medium")["vcpus"] == 32
    with pytest.raises(NotFound) as caught:
        nova.show_flavor("physical.none")
    assert caught.value.error_code == "itemNotFound"


def test_volume_attachments(harness):
    nova = harness.client.nova
    server_id = create_active(harness)
    attachment = nova.attach_volume(server_id, volume_id(5), device="/dev/sdc")
    assert (attachment["volumeId"], attachment["device"]) == (volume_id(5), "/dev/sdc")
    harness.settle()
    assert [a["volumeId"] for a in nova.list_volume_attachments(server_id)] == [volume_id(5)]
    with pytest.raises(BadRequest):
        nova.attach_volume(server_id, volume_id(5))  # already in use
    nova.detach_volume(server_id, volume_id(5))
    harness.settle()
    assert nova.list_volume_attachments(server_id) == []


def test_keypairs(harness):
    nova = harness.client.nova
    assert DEMO_KEY_NAME in {k["name"] for k in nova.list_keypairs()}
    assert nova.show_keypair(DEMO_KEY_NAME)["public_key"] == DEMO_PUBLIC_KEY

    generated = nova.create_keypair("generated-key")
    assert generated["name"] == "generated-key"
    assert "PRIVATE KEY" in generated["private_key"]
    imported = nova.create_keypair("imported key", public_key=DEMO_PUBLIC_KEY)
    assert "private_key" not in imported
    assert nova.show_keypair("imported key")["public_key"] == DEMO_PUBLIC_KEY
    with pytest.raises(Conflict):
        nova.create_keypair("generated-key")

    nova.delete_keypair("generated-key")
    nova.delete_keypair("imported key")
    assert {k["name"] for k in nova.list_keypairs()} == {DEMO_KEY_NAME}
    with pytest.raises(NotFound):
        nova.show_keypair("generated-key")


def test_tags(harness):
    nova = harness.client.nova
    server_id = create_active(harness)
    assert nova.list_tags(server_id) == [BAREMETAL_TAG]

    replaced = nova.replace_tags(server_id, [BAREMETAL_TAG, "request=r-1", "team a"])
    assert replaced == [BAREMETAL_TAG, "request=r-1", "team a"]
    nova.add_tag(server_id, "extra~tag")
    nova.add_tag(server_id, "extra~tag")  # present already: still fine
    assert nova.check_tag(server_id, "extra~tag") is True
    assert nova.check_tag(server_id, "team a") is True
    assert nova.check_tag(server_id, "absent") is False

    nova.delete_tag(server_id, "team a")
    assert nova.list_tags(server_id) == [BAREMETAL_TAG, "request=r-1", "extra~tag"]
    with pytest.raises(NotFound):
        nova.delete_tag(server_id, "team a")
    with pytest.raises(BadRequest):
        nova.replace_tags(server_id, ["bad/tag"])

    nova.delete_all_tags(server_id)
    assert nova.list_tags(server_id) == [BAREMETAL_TAG]


def test_every_native_call_is_gated_as_nova(harness):
    nova = harness.client.nova
    server_id = create_active(harness)
    nova.list_tags(server_id)
    nova.list_flavors()
    assert set(harness.gate_calls) == {"nova"}
    assert harness.cloud.counters()["nova"] == len(harness.gate_calls)


def test_unknown_server_is_itemnotfound(harness):
    with pytest.raises(NotFound) as caught:
        harness.client.nova.show_server("00000000-0000-0000-0000-000000000000")
    assert caught.value.error_code == "itemNotFound"
    assert "could not be found" in caught.value.message
