"""The Nova v2.1 subset, driven by ``openstacksdk`` and by plain HTTP."""

from __future__ import annotations

import openstack
import pytest

from tests.simulator.helpers import FLAVOR_ID, IMAGE_ID, SUBNET_ID, VOLUME_ID


def iam_token(simulator, http) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "demo",
                        "password": "demo-password",
                        "domain": {"name": "demo"},
                    }
                },
            },
            "scope": {"project": {"name": "cn-north-4"}},
        }
    }
    response = http.post(f"{simulator.base_url}/v3/auth/tokens", json=body, timeout=10)
    assert response.status_code == 201
    return response.headers["X-Subject-Token"]


def connect(simulator, http) -> openstack.connection.Connection:
    return openstack.connection.Connection(
        auth_type="admin_token",
        auth={"token": iam_token(simulator, http), "endpoint": simulator.base_url},
        compute_endpoint_override=f"{simulator.base_url}/v2.1/{simulator.project_id}",
    )


def test_openstacksdk_runs_the_native_scenario(simulator, http):
    compute = connect(simulator, http).compute

    assert sorted(f.name for f in compute.flavors()) == [
        "physical.h2.large",
        "physical.o2.medium",
        "physical.s4.large",
    ]
    keypair = compute.create_keypair(name="generated")
    assert keypair.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "generated" in {k.name for k in compute.keypairs()}
    created = compute.create_server(
        name="native",
        flavor_id=FLAVOR_ID,
        image_id=IMAGE_ID,
        networks=[{"uuid": SUBNET_ID}],
        key_name="generated",
    )
    server = compute.get_server(created.id)
    assert server.status == "ACTIVE"

    server.set_tags(compute, ["team-a", "batch-7"])
    assert compute.get_server(server.id).fetch_tags(compute).tags == [
        "__type_baremetal",
        "team-a",
        "batch-7",
    ]
    interfaces = list(compute.server_interfaces(server.id))
    assert [i.fixed_ips[0]["subnet_id"] for i in interfaces] == [SUBNET_ID]
    assert [ip.address for ip in compute.server_ips(server.id)] == [
        interfaces[0].fixed_ips[0]["ip_address"]
    ]
    compute.create_volume_attachment(server.id, volume=VOLUME_ID)
    assert [a.volume_id for a in compute.volume_attachments(server.id)] == [VOLUME_ID]

    compute.delete_keypair("generated")
    assert [k.name for k in compute.keypairs()] == ["demo-key"]


@pytest.fixture
def nova(simulator_factory, http):
    simulator = simulator_factory(auth=False)
    base = f"{simulator.base_url}/v2.1/{simulator.project_id}"

    def call(method, path, version=None, **kwargs):
        headers = {"X-OpenStack-Nova-API-Version": version} if version else {}
        return http.request(method, base + path, headers=headers, timeout=10, **kwargs)

    return call


def create_server(nova) -> str:
    body = {
        "server": {
            "name": "n",
            "flavorRef": FLAVOR_ID,
            "imageRef": IMAGE_ID,
            "networks": [{"uuid": SUBNET_ID}],
            "adminPass": "Secret-Pass-1",
        }
    }
    response = nova("POST", "/servers", json=body)
    assert response.status_code == 202
    return response.json()["server"]["id"]


def test_tags_are_refused_below_microversion_2_26(nova):
    server_id = create_server(nova)

    old = nova("GET", f"/servers/{server_id}/tags", version="2.25")
    absent = nova("PUT", f"/servers/{server_id}/tags", json={"tags": ["x"]})

    assert old.status_code == 404
    assert old.json()["itemNotFound"]["code"] == 404
    assert absent.status_code == 404
    assert nova("GET", f"/servers/{server_id}/tags", version="2.26").status_code == 200


def test_tag_verbs_keep_the_bare_metal_marker(nova):
    server_id = create_server(nova)
    tags = f"/servers/{server_id}/tags"

    assert nova("PUT", tags + "/red", version="2.26").status_code == 201
    assert nova("PUT", tags + "/red", version="2.26").status_code == 204
    assert nova("GET", tags + "/red", version="2.26").status_code == 204
    assert nova("GET", tags + "/blue", version="2.26").status_code == 404
    assert nova("DELETE", tags + "/red", version="2.26").status_code == 204
    assert nova("PUT", tags + "/.hidden", version="2.26").status_code == 400
    assert nova("DELETE", tags, version="2.26").status_code == 204
    assert nova("GET", tags, version="2.26").json() == {"tags": ["__type_baremetal"]}


def test_every_native_answer_closes_the_connection(nova):
    server_id = create_server(nova)

    for response in (
        nova("GET", f"/servers/{server_id}"),
        nova("GET", "/servers/no-such"),
        nova("GET", "/flavors/detail"),
    ):
        assert response.headers["Connection"] == "close"
        assert len(response.headers["X-Request-Id"]) == 32


def test_native_actions_and_delete(nova):
    server_id = create_server(nova)

    assert nova("POST", f"/servers/{server_id}/action", json={"os-start": {}}).status_code == 409
    assert nova("POST", f"/servers/{server_id}/action", json={"os-stop": {}}).status_code == 202
    assert nova("GET", f"/servers/{server_id}").json()["server"]["status"] == "SHUTOFF"
    assert nova("DELETE", f"/servers/{server_id}").status_code == 204
    assert nova("GET", f"/servers/{server_id}").json()["server"]["status"] == "DELETED"
    assert nova("GET", "/servers").json() == {"servers": []}


def test_native_volume_attach_refuses_an_in_use_volume(nova):
    first, second = create_server(nova), create_server(nova)
    body = {"volumeAttachment": {"volumeId": VOLUME_ID}}

    attached = nova("POST", f"/servers/{first}/os-volume_attachments", json=body)
    refused = nova("POST", f"/servers/{second}/os-volume_attachments", json=body)
    detached = nova("DELETE", f"/servers/{first}/os-volume_attachments/{VOLUME_ID}")

    assert attached.json()["volumeAttachment"]["device"] == "/dev/sdb"
    assert refused.status_code == 400
    assert "badRequest" in refused.json()
    assert detached.status_code == 202
    assert nova("GET", f"/servers/{first}/os-volume_attachments").json() == {
        "volumeAttachments": []
    }


def test_keypair_import_and_conflicts(nova):
    public_key = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x"
    )

    imported = nova(
        "POST",
        "/os-keypairs",
        version="2.2",
        json={"keypair": {"name": "mine", "public_key": public_key}},
    )
    duplicate = nova("POST", "/os-keypairs", json={"keypair": {"name": "mine"}})
    shown = nova("GET", "/os-keypairs/mine")

    assert imported.status_code == 201
    assert "private_key" not in imported.json()["keypair"]
    assert duplicate.status_code == 409
    assert shown.json()["keypair"]["public_key"] == public_key
    assert nova("DELETE", "/os-keypairs/mine", version="2.2").status_code == 204
    assert nova("GET", "/os-keypairs/mine").status_code == 404
