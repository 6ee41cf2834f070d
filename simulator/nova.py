"""The OpenStack native Nova v2.1 subset of reference section 11: servers, actions, IPs,
flavors, interfaces, volume attachments, key pairs and (microversion >= 2.26) tags."""

from __future__ import annotations

from urllib.parse import unquote

from simulator import keypairs, v1
from simulator.routing import RouteTable
from simulator.state import CloudState, Server
from simulator.views import (
    addresses,
    interface_attachment,
    interface_attachments,
    server_detail,
    volume_attachments,
)
from simulator.wire import ApiError, Request, Response, nova_error

routes = RouteTable()
P = "/v2.1/{project}"
S = P + "/servers"

#: The highest microversion we claim; tags need 2.26.
MAX_MICROVERSION = (2, 60)
TAGS_MICROVERSION = (2, 26)


def microversion(request: Request) -> tuple[int, int]:
    """The requested compute microversion (2.1 when absent; ``latest`` is our maximum)."""
    text = request.header("x-openstack-nova-api-version")
    if text is None:
        header = request.header("openstack-api-version") or ""
        service, _, text = header.partition(" ")
        text = text if service == "compute" else None
    if not text:
        return (2, 1)
    if text.strip() == "latest":
        return MAX_MICROVERSION
    try:
        major, minor = (int(part) for part in text.strip().split("."))
    except ValueError:
        raise nova_error(400, f"Invalid API version {text!r}.") from None
    if (major, minor) > MAX_MICROVERSION or (major, minor) < (2, 1):
        raise ApiError(406, {"computeFault": {"code": 406, "message": "Version not supported"}})
    return major, minor


def nova_server(state: CloudState, server_id: str) -> Server:
    server = state.server(server_id)
    if server is None:
        raise nova_error(404, f"Instance {server_id} could not be found.")
    return server


def links(request: Request, kind: str, item_id: str) -> list[dict]:
    project = request.params["project"]
    return [{"rel": "self", "href": f"/v2.1/{project}/{kind}/{item_id}"}]


def nova_detail(state: CloudState, server: Server, request: Request) -> dict:
    detail = server_detail(state, server)
    detail.update(
        addresses=addresses(server, int),
        flavor={"id": server.flavor_id, "links": links(request, "flavors", server.flavor_id)},
        image={"id": server.image_id, "links": []},
        links=links(request, "servers", server.id),
    )
    if microversion(request) >= TAGS_MICROVERSION:
        detail["tags"] = list(server.tags)
    else:
        detail.pop("tags", None)
    return detail


# -- version discovery ----------------------------------------------------------------------


def _version_document(base: str) -> dict:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": ".".join(map(str, MAX_MICROVERSION)),
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": base}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


@routes.add("GET", "/v2.1", "nova")
def show_version(state: CloudState, request: Request) -> Response:
    return Response(200, {"version": _version_document("/v2.1/")})


@routes.add("GET", P, "nova")
def show_project_version(state: CloudState, request: Request) -> Response:
    return Response(200, {"version": _version_document("/v2.1/")})


# -- servers --------------------------------------------------------------------------------


@routes.add("POST", S, "nova")
def create_server(state: CloudState, request: Request) -> Response:
    spec = request.json().get("server")
    if not isinstance(spec, dict):
        raise nova_error(400, "The request body must contain 'server'.")
    name = spec.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        raise nova_error(400, "Invalid server name.")
    catalog = state.catalog
    if not v1.known(spec.get("flavorRef"), catalog.flavors):
        raise nova_error(400, f"Flavor {spec.get('flavorRef')} could not be found.")
    if not v1.known(spec.get("imageRef"), catalog.images):
        raise nova_error(400, f"Image {spec.get('imageRef')} could not be found.")
    zone = spec.get("availability_zone") or catalog.availability_zones[0]
    if not v1.known(zone, catalog.availability_zones):
        raise nova_error(400, f"The requested availability zone {zone} is not available.")
    nics = _networks(state, spec.get("networks"))
    key_name = spec.get("key_name")
    if key_name and not v1.known(key_name, catalog.keypairs):
        raise nova_error(400, f"Invalid key_name provided: {key_name}.")
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise nova_error(400, "metadata must be an object.")
    vpc_id = catalog.subnets[nics[0][0]].vpc_id
    template = {
        "flavor_id": spec["flavorRef"],
        "image_id": spec["imageRef"],
        "availability_zone": zone,
        "vpc_id": vpc_id,
        "key_name": key_name,
        "kv_tags": {},
        "metadata": {**{str(k): str(v) for k, v in metadata.items()}, "vpc_id": vpc_id},
    }
    job = state.create_servers(template, [name], nics, at_once=True)
    server_id = job.sub_jobs[0].entities["server_id"]
    body = {
        "id": server_id,
        "links": links(request, "servers", server_id),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": "default"}],
    }
    if spec.get("adminPass"):
        body["adminPass"] = spec["adminPass"]
    return Response(202, {"server": body})


def _networks(state: CloudState, networks: object) -> list[tuple[str, str | None]]:
    """(subnet id, fixed IP or None) per network; ``uuid`` names the subnet, as on Huawei."""
    if not isinstance(networks, list) or not 1 <= len(networks) <= 2:
        raise nova_error(400, "networks must list one or two networks.")
    nics = []
    for network in networks:
        uuid = network.get("uuid") if isinstance(network, dict) else None
        subnet = state.catalog.subnets.get(uuid) if isinstance(uuid, str) else None
        if subnet is None:
            raise nova_error(400, f"Network {uuid} could not be found.")
        address = network.get("fixed_ip") or None
        if address is not None and not isinstance(address, str):
            raise nova_error(400, f"Invalid fixed IP address {address!r}.")
        if address and (not subnet.contains(address) or address in subnet.used):
            raise nova_error(409, f"Fixed IP address {address} is already in use or invalid.")
        nics.append((uuid, address))
    return nics


def _filtered(state: CloudState, request: Request) -> list[Server]:
    query = request.query
    servers = [s for s in reversed(state.servers.values()) if not s.deleted and not s.purged]
    if "name" in query:
        servers = [s for s in servers if query["name"] in s.name]
    if "status" in query:
        servers = [s for s in servers if s.status == query["status"].upper()]
    if query.get("tags"):
        wanted = set(query["tags"].split(","))
        servers = [s for s in servers if wanted <= set(s.tags)]
    if query.get("marker"):
        ids = [s.id for s in servers]
        if query["marker"] not in ids:
            raise nova_error(400, f"marker [{query['marker']}] not found")
        servers = servers[ids.index(query["marker"]) + 1 :]
    if query.get("limit"):
        servers = servers[: max(0, int(query["limit"]))]
    return servers


@routes.add("GET", S, "nova")
def list_servers(state: CloudState, request: Request) -> Response:
    servers = [
        {"id": s.id, "name": s.name, "links": links(request, "servers", s.id)}
        for s in _filtered(state, request)
    ]
    return Response(200, {"servers": servers})


@routes.add("GET", S + "/detail", "nova")
def list_server_details(state: CloudState, request: Request) -> Response:
    servers = [nova_detail(state, s, request) for s in _filtered(state, request)]
    return Response(200, {"servers": servers})


@routes.add("GET", S + "/{server_id}", "nova")
def show_server(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    return Response(200, {"server": nova_detail(state, server, request)})


@routes.add("PUT", S + "/{server_id}", "nova")
def rename_server(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    spec = request.json().get("server")
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        raise nova_error(400, "Invalid server name.")
    server.name = name
    return Response(200, {"server": nova_detail(state, server, request)})


@routes.add("DELETE", S + "/{server_id}", "nova")
def delete_server(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    if server.deleted or server.task_state == "deleting":
        raise nova_error(404, f"Instance {server.id} could not be found.")
    state.delete_servers([server])
    return Response(204)


#: action → statuses it may start from (upstream Nova answers 409 otherwise).
ACTION_FROM = {"os-start": ("SHUTOFF",), "os-stop": ("ACTIVE", "ERROR"), "reboot": ("ACTIVE",)}


@routes.add("POST", S + "/{server_id}/action", "nova")
def server_action(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    body = request.json()
    actions = [name for name in ACTION_FROM if name in body]
    if len(actions) != 1:
        raise nova_error(400, "Exactly one of os-start, os-stop and reboot is supported.")
    action = actions[0]
    if server.deleted or server.task_state or server.status not in ACTION_FROM[action]:
        raise nova_error(
            409, f"Cannot '{action}' instance {server.id} while it is in {server.status}."
        )
    if not isinstance(body[action] or {}, dict):
        raise nova_error(400, f"{action} takes an object.")
    if action == "reboot" and (body["reboot"] or {}).get("type", "HARD") != "HARD":
        raise nova_error(400, "Only HARD reboot is supported.")
    state.power_action(action, [server])
    return Response(202)


# -- ips, flavors, interfaces ---------------------------------------------------------------


@routes.add("GET", S + "/{server_id}/ips", "nova")
def list_ips(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    slim = {
        vpc: [{"version": a["version"], "addr": a["addr"]} for a in items]
        for vpc, items in addresses(server, int).items()
    }
    return Response(200, {"addresses": slim})


@routes.add("GET", S + "/{server_id}/ips/{network}", "nova")
def show_ips(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    network = request.params["network"]
    found = addresses(server, int).get(network)
    if found is None:
        raise nova_error(404, f"Network {network} could not be found.")
    return Response(200, {network: [{"version": a["version"], "addr": a["addr"]} for a in found]})


def nova_flavor(item: dict, request: Request) -> dict:
    flavor = {k: v for k, v in item.items() if k != "os_extra_specs"}
    flavor.update(vcpus=int(item["vcpus"]), disk=int(item["disk"]))
    flavor["links"] = links(request, "flavors", item["id"])
    return flavor


@routes.add("GET", P + "/flavors", "nova")
def list_flavors(state: CloudState, request: Request) -> Response:
    flavors = [
        {"id": f["id"], "name": f["name"], "links": links(request, "flavors", f["id"])}
        for f in state.catalog.flavors.values()
    ]
    return Response(200, {"flavors": flavors})


@routes.add("GET", P + "/flavors/detail", "nova")
def list_flavor_details(state: CloudState, request: Request) -> Response:
    flavors = [nova_flavor(f, request) for f in state.catalog.flavors.values()]
    return Response(200, {"flavors": flavors})


def _flavor(state: CloudState, flavor_id: str) -> dict:
    item = state.catalog.flavors.get(flavor_id)
    if item is None:
        raise nova_error(404, f"Flavor {flavor_id} could not be found.")
    return item


@routes.add("GET", P + "/flavors/{flavor_id}", "nova")
def show_flavor(state: CloudState, request: Request) -> Response:
    item = _flavor(state, request.params["flavor_id"])
    return Response(200, {"flavor": nova_flavor(item, request)})


@routes.add("GET", P + "/flavors/{flavor_id}/os-extra_specs", "nova")
def show_extra_specs(state: CloudState, request: Request) -> Response:
    item = _flavor(state, request.params["flavor_id"])
    return Response(200, {"extra_specs": dict(item["os_extra_specs"])})


@routes.add("GET", S + "/{server_id}/os-interface", "nova")
def list_interfaces(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    return Response(200, {"interfaceAttachments": interface_attachments(server)})


@routes.add("GET", S + "/{server_id}/os-interface/{port_id}", "nova")
def show_interface(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    for port in server.ports:
        if port.port_id == request.params["port_id"]:
            return Response(200, {"interfaceAttachment": interface_attachment(port)})
    raise nova_error(404, f"Port {request.params['port_id']} could not be found.")


# -- volume attachments ---------------------------------------------------------------------


def _v1_to_nova(error: ApiError, status: int = 400) -> ApiError:
    """Re-express a v1 validation error in Nova's shape (the checks are the same)."""
    message = error.body.get("error", {}).get("message", "Invalid request.")
    if error.status == 404:
        return nova_error(404, message)
    return nova_error(409 if error.body["error"]["code"] == "BMS.1001" else status, message)


@routes.add("GET", S + "/{server_id}/os-volume_attachments", "nova")
def list_volume_attachments(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    return Response(200, {"volumeAttachments": volume_attachments(server)})


@routes.add("GET", S + "/{server_id}/os-volume_attachments/{volume_id}", "nova")
def show_volume_attachment(state: CloudState, request: Request) -> Response:
    server = nova_server(state, request.params["server_id"])
    for attachment in volume_attachments(server):
        if attachment["id"] == request.params["volume_id"]:
            return Response(200, {"volumeAttachment": attachment})
    raise nova_error(404, f"Volume {request.params['volume_id']} is not attached.")


@routes.add("POST", S + "/{server_id}/os-volume_attachments", "nova")
def attach_volume(state: CloudState, request: Request) -> Response:
    spec = request.json().get("volumeAttachment")
    if not isinstance(spec, dict):
        raise nova_error(400, "The request body must contain 'volumeAttachment'.")
    nova_server(state, request.params["server_id"])
    try:
        server = v1.attachable_server(state, request.params["server_id"])
        volume = v1.attachable_volume(state, server, spec.get("volumeId"), spec.get("device"))
    except ApiError as error:
        code = error.body["error"]["code"]
        raise _v1_to_nova(error, 404 if code == "BMS.1003" else 400) from None
    state.attach_volume(server, volume, spec.get("device") or None)
    attachment = {
        "id": volume.id,
        "volumeId": volume.id,
        "serverId": server.id,
        "device": server.volumes[volume.id],
    }
    return Response(200, {"volumeAttachment": attachment})


@routes.add("DELETE", S + "/{server_id}/os-volume_attachments/{volume_id}", "nova")
def detach_volume(state: CloudState, request: Request) -> Response:
    nova_server(state, request.params["server_id"])
    try:
        server = v1.attachable_server(state, request.params["server_id"])
        volume = v1.detachable_volume(state, server, request.params["volume_id"])
    except ApiError as error:
        code = error.body["error"]["code"]
        raise _v1_to_nova(error, 404 if code == "BMS.0114" else 400) from None
    state.detach_volume(server, volume)
    return Response(202)


# -- key pairs ------------------------------------------------------------------------------


@routes.add("GET", P + "/os-keypairs", "nova")
def list_keypairs(state: CloudState, request: Request) -> Response:
    items = [{"keypair": keypairs.summary(k)} for k in state.catalog.keypairs.values()]
    return Response(200, {"keypairs": items})


@routes.add("POST", P + "/os-keypairs", "nova")
def create_keypair(state: CloudState, request: Request) -> Response:
    spec = request.json().get("keypair")
    if not isinstance(spec, dict):
        raise nova_error(400, "The request body must contain 'keypair'.")
    name = spec.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        raise nova_error(400, "Keypair name must be 1 to 255 characters.")
    if name in state.catalog.keypairs:
        raise nova_error(409, f"Key pair '{name}' already exists.")
    public_key = spec.get("public_key")
    if public_key is not None and not isinstance(public_key, str):
        raise nova_error(400, "public_key must be a string.")
    try:
        keypair = keypairs.build(name, public_key, state.clock.now())
    except ValueError as exc:
        raise nova_error(400, f"Keypair data is invalid: {exc}") from None
    private_key = keypair.pop("private_key", None)
    state.catalog.keypairs[name] = keypair
    body = {**keypairs.summary(keypair), "user_id": keypair["user_id"]}
    if private_key:
        body["private_key"] = private_key
    status = 201 if microversion(request) >= (2, 2) else 200
    return Response(status, {"keypair": body})


def _keypair(state: CloudState, request: Request) -> dict:
    name = unquote(request.params["name"])
    keypair = state.catalog.keypairs.get(name)
    if keypair is None:
        raise nova_error(404, f"Keypair {name} not found.")
    return keypair


@routes.add("GET", P + "/os-keypairs/{name}", "nova")
def show_keypair(state: CloudState, request: Request) -> Response:
    return Response(200, {"keypair": keypairs.detail(_keypair(state, request))})


@routes.add("DELETE", P + "/os-keypairs/{name}", "nova")
def delete_keypair(state: CloudState, request: Request) -> Response:
    keypair = _keypair(state, request)
    del state.catalog.keypairs[keypair["name"]]
    return Response(204 if microversion(request) >= (2, 2) else 202)
