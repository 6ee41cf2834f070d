"""The BMS v1 API (reference sections 4–10): create, show, list, rename, volumes, power
actions, delete, jobs, flavors, limits, tags and metadata."""

from __future__ import annotations

import re
import secrets

from simulator.catalog import ON_SALE, Volume, flavor_status
from simulator.routing import RouteTable
from simulator.state import BAREMETAL_TAG, CloudState, Server
from simulator.views import (
    interface_attachments,
    server_detail,
    slim_server,
    volume_attachments,
)
from simulator.wire import ApiError, Request, Response, bms_error

routes = RouteTable()
B = "/v1/{project}/baremetalservers"

#: CJK, letters, digits, ``_ - .`` (reference section 5).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-\u4e00-\u9fff]+$")
#: Data disks attach as SCSI devices after the system disk ``/dev/sda``.
DEVICE_PATTERN = re.compile(r"^/dev/sd[b-z]$")
MAX_COUNT = 100
MAX_SERVER_TAGS = 9
MAX_KV_TAGS = 20


def known(value: object, collection) -> bool:
    """Whether ``value`` is a string naming an item of ``collection`` (ids arrive as JSON)."""
    return isinstance(value, str) and value in collection


def server_or_404(state: CloudState, server_id: str, *, live: bool = False) -> Server:
    """The server, or the v1 "does not exist" error; ``live`` also refuses DELETED ones."""
    server = state.server(server_id)
    if server is None or (live and server.deleted):
        raise bms_error("BMS.0040", f"The server {server_id} does not exist.", 404)
    return server


def check_name(name: object, max_length: int, code: str = "BMS.0206") -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= max_length:
        raise bms_error(code, f"The server name must be 1 to {max_length} characters.")
    if not NAME_PATTERN.match(name):
        raise bms_error(code, "The server name contains invalid characters.")
    return name


# -- create ---------------------------------------------------------------------------------


@routes.add("POST", B, "create")
def create_servers(state: CloudState, request: Request) -> Response:
    spec = request.json().get("server")
    if not isinstance(spec, dict):
        raise bms_error("BMS.0003", "The request body must contain 'server'.")
    count = _count(spec.get("count", 1))
    check_name(spec.get("name"), 63 if count == 1 else 58)
    _check_catalog(state, spec)
    _check_limits(state, spec["flavorRef"], count)
    nics = _nics(state, spec, count)
    _check_login(state, spec)
    metadata = _metadata(spec)
    prepaid, auto_pay = _charging(spec.get("extendparam"))
    template = {
        "flavor_id": spec["flavorRef"],
        "image_id": spec["imageRef"],
        "availability_zone": spec["availability_zone"],
        "vpc_id": spec["vpcid"],
        "key_name": spec.get("key_name"),
        "kv_tags": _server_tags(spec.get("server_tags") or []),
        "metadata": {**metadata, **_system_metadata(state, spec, prepaid)},
    }
    names = [spec["name"]] if count == 1 else [f"{spec['name']}-{i:04d}" for i in range(count)]
    if prepaid and not auto_pay:
        job = state.pending_payment_job("baremetalBatchCreate")
    else:
        job = state.create_servers(template, names, nics)
    if prepaid:
        order_id = template["metadata"]["metering.order_id"]
        return Response(200, {"order_id": order_id, "job_id": job.job_id})
    return Response(200, {"job_id": job.job_id})


def _check_catalog(state: CloudState, spec: dict) -> None:
    """Flavor, image, zone and VPC must exist (reference section 12 codes)."""
    catalog = state.catalog
    if not known(spec.get("flavorRef"), catalog.flavors):
        raise bms_error("BMS.0008", f"The flavor {spec.get('flavorRef')} does not exist.")
    if not known(spec.get("imageRef"), catalog.images):
        raise bms_error("BMS.0010", f"The image {spec.get('imageRef')} does not exist.")
    if not known(spec.get("availability_zone"), catalog.availability_zones):
        raise bms_error("BMS.0022", f"Invalid availability_zone {spec.get('availability_zone')}.")
    if not known(spec.get("vpcid"), catalog.vpcs):
        raise bms_error("BMS.0246", f"The VPC {spec.get('vpcid')} does not exist.")
    zone = spec["availability_zone"]
    if flavor_status(catalog.flavors[spec["flavorRef"]], zone) not in ON_SALE:
        message = f"Flavor parameter is illegal, reason: {spec['flavorRef']} is not sold in {zone}."
        raise bms_error("BMS.0021", message)


#: What a create that exceeds the account's limits answers, by the limits it exceeds
#: (instances, cores, RAM); reference section 12 and the OTC error code table.
LIMIT_CODES = {
    (True, False, False): "BMS.0025",
    (False, True, False): "BMS.0026",
    (False, False, True): "BMS.0027",
    (True, True, False): "BMS.0028",
    (True, False, True): "BMS.0029",
    (False, True, True): "BMS.0030",
    (True, True, True): "BMS.0031",
}


def _check_limits(state: CloudState, flavor_id: str, count: int) -> None:
    """The new servers must fit in the account's servers, cores and RAM left."""
    flavor = state.catalog.flavors[flavor_id]
    used = _usage(state)
    limits = state.catalog.limits
    exceeded = (
        used["instances"] + count > limits["maxTotalInstances"],
        used["cores"] + count * int(flavor["vcpus"]) > limits["maxTotalCores"],
        used["ram"] + count * int(flavor["ram"]) > limits["maxTotalRAMSize"],
    )
    if any(exceeded):
        raise bms_error(LIMIT_CODES[exceeded], "The quota of the account is exceeded.")


def _usage(state: CloudState) -> dict[str, int]:
    """Servers, cores and RAM (MB) the live servers take."""
    live = state.live_servers()
    flavors = state.catalog.flavors
    return {
        "instances": len(live),
        "cores": sum(int(flavors[s.flavor_id]["vcpus"]) for s in live if s.flavor_id in flavors),
        "ram": sum(int(flavors[s.flavor_id]["ram"]) for s in live if s.flavor_id in flavors),
    }


def _charging(extendparam: object) -> tuple[bool, bool]:
    """(prePaid, auto-pay). Without ``chargingMode`` we bill postPaid: the SDK documents
    prePaid as the default, but an unpaid order would leave the job waiting for ever."""
    extendparam = extendparam or {}
    if not isinstance(extendparam, dict):
        raise bms_error("BMS.0022", "extendparam must be an object.")
    mode = extendparam.get("chargingMode", "postPaid")
    if mode not in ("prePaid", "postPaid"):
        raise bms_error("BMS.0022", f"Invalid chargingMode {mode!r}.")
    auto_pay = str(extendparam.get("isAutoPay", "false")).lower() == "true"
    return mode == "prePaid", auto_pay


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
        raise bms_error("BMS.0205", f"count must be an integer from 1 to {MAX_COUNT}.")
    return value


def _nics(state: CloudState, spec: dict, count: int) -> list[tuple[str, str | None]]:
    """(subnet id, fixed IP or None) per NIC; a fixed IP only for a single server."""
    nics = spec.get("nics")
    if not isinstance(nics, list) or not 1 <= len(nics) <= 2:
        raise bms_error("BMS.0015", "nics must list one or two subnets.")
    result = []
    for nic in nics:
        subnet_id = nic.get("subnet_id") if isinstance(nic, dict) else None
        subnet = state.catalog.subnets.get(subnet_id) if isinstance(subnet_id, str) else None
        if subnet is None or subnet.vpc_id != spec["vpcid"]:
            raise bms_error("BMS.0015", f"The subnet {subnet_id} does not exist in the VPC.")
        address = nic.get("ip_address") or None
        if address is not None and not isinstance(address, str):
            raise bms_error("BMS.0014", f"Invalid IP address {address!r}.")
        if address and count > 1:
            raise bms_error("BMS.0207", "A fixed IP address cannot be given for a batch.")
        if address and (not subnet.contains(address) or address in subnet.used):
            raise bms_error("BMS.0014", f"The IP address {address} is not free in the subnet.")
        result.append((subnet_id, address))
    return result


def _check_login(state: CloudState, spec: dict) -> None:
    """Exactly one of adminPass and key_name, or a Linux password in user_data alone."""
    has_password, key_name = bool(spec.get("adminPass")), spec.get("key_name")
    if has_password and key_name or not (has_password or key_name or spec.get("user_data")):
        raise bms_error("BMS.0111", "None or multiple passwords specified.")
    if key_name and not known(key_name, state.catalog.keypairs):
        raise bms_error("BMS.0049", f"The key pair {key_name} does not exist.")


def _metadata(spec: dict) -> dict[str, str]:
    metadata = spec.get("metadata")
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 255 and len(v) <= 255
        for k, v in metadata.items()
    ):
        raise bms_error("BMS.0217", "metadata must map strings of at most 255 characters.")
    return metadata


def _server_tags(server_tags: object) -> dict[str, str]:
    if not isinstance(server_tags, list) or len(server_tags) > MAX_SERVER_TAGS:
        raise bms_error("BMS.0022", f"At most {MAX_SERVER_TAGS} server_tags are allowed.")
    tags = {}
    for tag in server_tags:
        key = tag.get("key") if isinstance(tag, dict) else None
        if not isinstance(key, str) or not 1 <= len(key) <= 36 or key == BAREMETAL_TAG:
            raise bms_error("BMS.0022", f"Invalid server tag {tag!r}.")
        tags[key] = str(tag.get("value", ""))
    return tags


def _system_metadata(state: CloudState, spec: dict, prepaid: bool) -> dict[str, str]:
    """What the cloud adds to a server's metadata (reference section 6)."""
    image = state.catalog.images[spec["imageRef"]]
    system = {
        "vpc_id": spec["vpcid"],
        "image_name": image["name"],
        "os_type": image.get("os_type", "Linux"),
        "os_bit": image.get("os_bit", "64"),
        "chargingMode": "1" if prepaid else "0",
        "metering.image_id": image["id"],
        "metering.imagetype": "gold",
        "metering.resourcespeccode": f"{spec['flavorRef']}.linux",
        "metering.resourcetype": "hws.resource.type.pm",
    }
    if prepaid:
        system["metering.order_id"] = "CS" + secrets.token_hex(6).upper()
    return system


# -- read and rename ------------------------------------------------------------------------


@routes.add("GET", B + "/detail", "list")
def list_servers(state: CloudState, request: Request) -> Response:
    servers, count = _listed(state, request)
    return Response(200, {"servers": [server_detail(state, s) for s in servers], "count": count})


@routes.add("GET", "/v1.1/{project}/baremetalservers/detail", "list")
def list_servers_slim(state: CloudState, request: Request) -> Response:
    """The v1.1 list: the same filters, a slim record per server, no count."""
    servers, _ = _listed(state, request)
    return Response(200, {"servers": [slim_server(state, s) for s in servers]})


def _listed(state: CloudState, request: Request) -> tuple[list[Server], int]:
    """One page of the servers matching the query, and how many match in all."""
    query = request.query
    servers = [s for s in reversed(state.servers.values()) if not s.deleted and not s.purged]
    if "name" in query:
        servers = [s for s in servers if query["name"] in s.name]
    if "status" in query:
        servers = [s for s in servers if s.status == query["status"]]
    if "flavor" in query:
        servers = [s for s in servers if s.flavor_id == query["flavor"]]
    if query.get("tags"):
        wanted = set(query["tags"].split(","))
        servers = [s for s in servers if wanted <= set(s.all_tags()) | set(s.kv_tags)]
    limit = _int_param(query.get("limit", "25"), 1, 1000)
    page = _int_param(query.get("offset", "1"), 1, 10**6)
    return servers[(page - 1) * limit : page * limit], len(servers)


def _int_param(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bms_error("BMS.0022", f"Invalid paging parameter {text!r}.")
    return value


@routes.add("GET", B + "/flavors", "list")
def list_flavors(state: CloudState, request: Request) -> Response:
    """Every flavor; with ``availability_zone``, those listed there (not ``abandon``ed in it;
    none for an unknown zone), each with its ``cond:operation:*`` states."""
    flavors = list(state.catalog.flavors.values())
    zone = request.query.get("availability_zone")
    if zone:
        if zone not in state.catalog.availability_zones:
            flavors = []
        flavors = [f for f in flavors if flavor_status(f, zone) != "abandon"]
    return Response(200, {"flavors": flavors})


@routes.add("GET", B + "/limits", "list")
def show_limits(state: CloudState, request: Request) -> Response:
    used = _usage(state)
    limits = state.catalog.limits
    absolute = {
        "maxTotalInstances": limits["maxTotalInstances"],
        "maxTotalCores": limits["maxTotalCores"],
        "maxTotalRAMSize": limits["maxTotalRAMSize"],
        "maxTotalKeypairs": 100,
        "maxImageMeta": 128,
        "maxPersonality": 5,
        "maxPersonalitySize": 10240,
        "maxSecurityGroupRules": 20,
        "maxSecurityGroups": 10,
        "maxServerGroupMembers": 16,
        "maxServerGroups": 10,
        "maxServerMeta": 128,
        "maxTotalFloatingIps": 10,
        "totalCoresUsed": used["cores"],
        "totalInstancesUsed": used["instances"],
        "totalRAMUsed": used["ram"],
        "totalFloatingIpsUsed": 0,
        "totalSecurityGroupsUsed": 1,
        "totalServerGroupsUsed": 0,
    }
    return Response(200, {"absolute": absolute})


@routes.add("POST", B + "/action", "list")
def batch_action(state: CloudState, request: Request) -> Response:
    body = request.json()
    actions = [name for name in state.POWER_ACTIONS if name in body]
    if len(actions) != 1 or not isinstance(body[actions[0]], dict):
        raise bms_error("BMS.0022", "Exactly one of os-start, os-stop and reboot is required.")
    action = actions[0]
    if action == "reboot" and body[action].get("type") not in ("HARD", "SOFT"):
        raise bms_error("BMS.0022", "reboot.type must be HARD or SOFT.")
    servers = _listed_servers(state, body[action].get("servers"))
    for server in servers:
        _check_power_state(server, action)
    return Response(200, {"job_id": state.power_action(action, servers).job_id})


def _listed_servers(state: CloudState, items: object) -> list[Server]:
    if not isinstance(items, list) or not 1 <= len(items) <= 1000:
        raise bms_error("BMS.0022", "servers must list 1 to 1000 servers.")
    ids = [item.get("id") if isinstance(item, dict) else None for item in items]
    return [server_or_404(state, str(server_id), live=True) for server_id in ids]


#: task_state → the code of "busy" (reference section 12).
BUSY_CODES = {"powering-on": "BMS.0035", "powering-off": "BMS.0036"}


def _check_power_state(server: Server, action: str) -> None:
    if server.task_state:
        code = BUSY_CODES.get(server.task_state, "BMS.0037")
        raise bms_error(code, f"The server {server.id} is busy ({server.task_state}).")
    if action == "os-start" and server.status != "SHUTOFF":
        raise bms_error("BMS.0038", f"The server {server.id} is already running.")
    if action in ("os-stop", "reboot") and server.status != "ACTIVE":
        raise bms_error("BMS.0039", f"The server {server.id} is not running.")


@routes.add("POST", B + "/delete", "list")
def batch_delete(state: CloudState, request: Request) -> Response:
    servers = _listed_servers(state, request.json().get("servers"))
    for server in servers:
        if server.task_state == "deleting":
            raise bms_error("BMS.0040", f"The server {server.id} is being deleted.")
    return Response(200, {"job_id": state.delete_servers(servers).job_id})


@routes.add("GET", B + "/{server_id}", "show")
def show_server(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"])
    return Response(200, {"server": server_detail(state, server)})


@routes.add("PUT", B + "/{server_id}", "update")
def rename_server(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"], live=True)
    spec = request.json().get("server")
    name = check_name(spec.get("name") if isinstance(spec, dict) else None, 63, "BMS.0219")
    server.name = name
    detail = server_detail(state, server)
    links = [{"rel": "self", "href": f"{request.path}"}]
    detail.update(
        links=links,
        flavor={"id": server.flavor_id, "links": []},
        image={"id": server.image_id, "links": []},
        security_groups=[{"name": "default"}],
    )
    # why: this response types the timestamps as datetimes; an empty string is not one.
    detail["OS-SRV-USG:terminated_at"] = None
    detail["os-extended-volumes:volumes_attached"] = [
        {"id": volume_id, "delete_on_termination": False} for volume_id in server.volumes
    ]
    return Response(200, {"server": detail})


# -- volumes --------------------------------------------------------------------------------


def attachable_server(state: CloudState, server_id: str) -> Server:
    server = server_or_404(state, server_id, live=True)
    if server.status not in ("ACTIVE", "SHUTOFF") or server.task_state:
        raise bms_error("BMS.1001", f"The server {server.id} is not ACTIVE or SHUTOFF.")
    return server


def attachable_volume(state: CloudState, server: Server, volume_id: object, device) -> Volume:
    volume = state.catalog.volumes.get(volume_id) if isinstance(volume_id, str) else None
    if volume is None:
        raise bms_error("BMS.1003", f"The volume {volume_id} does not exist.")
    if volume.status != "available":
        raise bms_error("BMS.0103", f"The volume {volume.id} is {volume.status}.")
    if device and not (isinstance(device, str) and DEVICE_PATTERN.match(device)):
        raise bms_error("BMS.0022", f"Invalid device {device!r}; expected /dev/sdb to /dev/sdz.")
    if device and device in server.volumes.values():
        raise bms_error("BMS.0104", f"The device {device} is in use.")
    return volume


def detachable_volume(state: CloudState, server: Server, volume_id: str) -> Volume:
    volume = state.catalog.volumes.get(volume_id)
    if volume is None or volume_id not in server.volumes:
        raise bms_error(
            "BMS.0114", f"Volume {volume_id} is not in server {server.id} attach volume list."
        )
    if volume.status != "in-use":
        raise bms_error("BMS.0105", f"The volume {volume_id} is {volume.status}.")
    return volume


@routes.add("POST", B + "/{server_id}/attachvolume", "attach")
def attach_volume(state: CloudState, request: Request) -> Response:
    server = attachable_server(state, request.params["server_id"])
    spec = request.json().get("volumeAttachment")
    if not isinstance(spec, dict):
        raise bms_error("BMS.0003", "The request body must contain 'volumeAttachment'.")
    volume = attachable_volume(state, server, spec.get("volumeId"), spec.get("device"))
    job = state.attach_volume(server, volume, spec.get("device") or None)
    return Response(202, {"job_id": job.job_id})


@routes.add("DELETE", B + "/{server_id}/detachvolume/{attachment_id}", "detach")
def detach_volume(state: CloudState, request: Request) -> Response:
    server = attachable_server(state, request.params["server_id"])
    volume = detachable_volume(state, server, request.params["attachment_id"])
    return Response(202, {"job_id": state.detach_volume(server, volume).job_id})


@routes.add("GET", B + "/{server_id}/os-volume_attachments", "list")
def list_volume_attachments(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"])
    return Response(200, {"volumeAttachments": volume_attachments(server)})


@routes.add("GET", B + "/{server_id}/os-interface", "list")
def list_interfaces(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"])
    return Response(200, {"interfaceAttachments": interface_attachments(server)})


# -- tags, metadata, jobs -------------------------------------------------------------------


@routes.add("GET", B + "/{server_id}/tags", "list")
def show_tags(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"])
    return Response(200, {"tags": [{"key": k, "value": v} for k, v in server.kv_tags.items()]})


@routes.add("POST", B + "/{server_id}/tags/action", "list")
def tags_action(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"], live=True)
    body = request.json()
    tags = body.get("tags")
    if body.get("action") not in ("create", "delete") or not isinstance(tags, list):
        raise bms_error("BMS.0022", "action must be create or delete, with a tags list.")
    if not all(isinstance(tag, dict) and isinstance(tag.get("key"), str) for tag in tags):
        raise bms_error("BMS.0022", "Every tag needs a key.")
    if body["action"] == "delete":
        for tag in tags:
            server.kv_tags.pop(tag["key"], None)
        return Response(204)
    merged = {**server.kv_tags, **{tag["key"]: str(tag.get("value", "")) for tag in tags}}
    if len(merged) > MAX_KV_TAGS:
        raise bms_error("BMS.0022", f"A server carries at most {MAX_KV_TAGS} tags.")
    server.kv_tags = merged
    return Response(204)


@routes.add("POST", B + "/{server_id}/metadata", "list")
def update_metadata(state: CloudState, request: Request) -> Response:
    server = server_or_404(state, request.params["server_id"], live=True)
    metadata = _metadata(request.json())
    server.metadata.update(metadata)
    return Response(200, {"metadata": dict(server.metadata)})


@routes.add("GET", "/v1/{project}/jobs/{job_id}", "job")
def show_job(state: CloudState, request: Request) -> Response:
    job = state.job(request.params["job_id"])
    if job is None:
        raise bms_error("BMS.0022", f"The job {request.params['job_id']} does not exist.", 404)
    return Response(200, job.to_api())


__all__ = ["routes", "ApiError"]
