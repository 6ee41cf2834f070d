"""Reads of the services around BMS that a preflight makes: IMS images, VPC networks, EVS disks.

Each answers as its service's v1/v2 API does (Huawei API reference of IMS, VPC and EVS; SDK
models ``huaweicloudsdkims``/``vpc``/``evs``), on the simulator's one base URL. All count as
API class ``list``: in the cloud they spend their own services' quotas, which are not
modelled here. Facts the references leave open are marked [INF].
"""

from __future__ import annotations

from simulator.catalog import AVAILABILITY_ZONES, Subnet, Volume
from simulator.routing import RouteTable
from simulator.state import CloudState
from simulator.wire import ApiError, Request, Response

routes = RouteTable()

#: EVS answers at most this many ids per ``ids`` filter (SDK ``ListVolumesRequest.ids``).
MAX_VOLUME_IDS = 60


def vpc_error(status: int, code: str, message: str) -> ApiError:
    """A VPC service error: ``{"code", "message"}`` at the top level."""
    return ApiError(status, {"code": code, "message": message})


# -- IMS --------------------------------------------------------------------------------------


@routes.add("GET", "/v2/cloudimages", "list")
def list_images(state: CloudState, request: Request) -> Response:
    """``GET /v2/cloudimages[?id=][&status=]``: ``{"images": [...]}``; an unknown id is an
    empty list, not an error."""
    query = request.query
    images = list(state.catalog.images.values())
    if "id" in query:
        images = [i for i in images if i["id"] == query["id"]]
    if "status" in query:
        images = [i for i in images if i["status"] == query["status"]]
    if "virtual_env_type" in query:
        images = [i for i in images if i["virtual_env_type"] == query["virtual_env_type"]]
    return Response(200, {"images": [ims_image(i) for i in images]})


def ims_image(item: dict) -> dict:
    """An image as IMS lists it (a subset of its fields, the double-underscore ones included)."""
    return {
        "id": item["id"],
        "name": item["name"],
        "status": item["status"],
        "visibility": "private",
        "virtual_env_type": item["virtual_env_type"],
        "__os_type": item.get("os_type", "Linux"),
        "__os_bit": item.get("os_bit", "64"),
        "__platform": item["name"].split(" ")[0],
        "__imagetype": "private",
        "disk_format": "zvhd2",
        "min_disk": 40,
        "min_ram": 0,
        "protected": False,
        "tags": [],
    }


# -- VPC --------------------------------------------------------------------------------------


@routes.add("GET", "/v1/{project}/vpcs/{vpc_id}", "list")
def show_vpc(state: CloudState, request: Request) -> Response:
    """``GET /v1/{project_id}/vpcs/{vpc_id}``: ``{"vpc": {...}}``; 404 ``VPC.0003``."""
    vpc_id = request.params["vpc_id"]
    if vpc_id not in state.catalog.vpcs:
        raise vpc_error(404, "VPC.0003", "VPC does not exist.")
    subnets = [s for s in state.catalog.subnets.values() if s.vpc_id == vpc_id]
    body = {
        "id": vpc_id,
        "name": f"vpc-{vpc_id[:8]}",
        "description": "",
        "cidr": "192.168.0.0/16",
        "status": "OK",
        "routes": [],
        "enterprise_project_id": "0",
        "subnet_count": len(subnets),  # [INF] not in every region's answer
    }
    return Response(200, {"vpc": body})


@routes.add("GET", "/v1/{project}/subnets/{subnet_id}", "list")
def show_subnet(state: CloudState, request: Request) -> Response:
    """``GET /v1/{project_id}/subnets/{subnet_id}``: ``{"subnet": {...}}``; 404 ``VPC.0202``
    [INF: the code of a missing subnet]."""
    subnet = state.catalog.subnets.get(request.params["subnet_id"])
    if subnet is None:
        raise vpc_error(404, "VPC.0202", "Subnet does not exist.")
    return Response(200, {"subnet": vpc_subnet(subnet)})


def vpc_subnet(subnet: Subnet) -> dict:
    gateway = subnet.cidr.rsplit(".", 1)[0] + ".1" if "." in subnet.cidr else ""
    return {
        "id": subnet.id,
        "name": subnet.name,
        "description": "",
        "cidr": subnet.cidr,
        "gateway_ip": gateway,
        "ipv6_enable": False,
        "dhcp_enable": True,
        "primary_dns": "100.125.1.250",
        "secondary_dns": "100.125.21.250",
        "dnsList": ["100.125.1.250", "100.125.21.250"],
        "availability_zone": AVAILABILITY_ZONES[0],
        "vpc_id": subnet.vpc_id,
        "status": subnet.status,
        "neutron_network_id": subnet.id,
        "neutron_subnet_id": subnet.id,
        "extra_dhcp_opts": [],
    }


# -- EVS --------------------------------------------------------------------------------------


@routes.add("GET", "/v2/{project}/cloudvolumes/detail", "list")
def list_volumes(state: CloudState, request: Request) -> Response:
    """``GET /v2/{project_id}/cloudvolumes/detail[?ids=['a','b']][&status=]``:
    ``{"volumes": [...], "count": N}``. Unknown ids are ignored; more than 60 are refused
    [INF: the code]."""
    query = request.query
    volumes = list(state.catalog.volumes.values())
    if "ids" in query:
        wanted = parse_ids(query["ids"])
        if len(wanted) > MAX_VOLUME_IDS:
            message = f"At most {MAX_VOLUME_IDS} ids may be queried at once."
            raise ApiError(400, {"error": {"code": "EVS.2001", "message": message}})
        volumes = [state.catalog.volumes[v] for v in wanted if v in state.catalog.volumes]
    elif "id" in query:
        volumes = [v for v in volumes if v.id == query["id"]]
    if "status" in query:
        volumes = [v for v in volumes if v.status == query["status"]]
    limit = _limit(query.get("limit", "1000"))
    shown = volumes[:limit]
    return Response(200, {"volumes": [evs_volume(v) for v in shown], "count": len(volumes)})


@routes.add("GET", "/v2/{project}/cloudvolumes/{volume_id}", "list")
def show_volume(state: CloudState, request: Request) -> Response:
    """``GET /v2/{project_id}/cloudvolumes/{volume_id}``: ``{"volume": {...}}``, 404 unknown."""
    volume = state.catalog.volumes.get(request.params["volume_id"])
    if volume is None:
        raise ApiError(
            404, {"error": {"code": "EVS.2001", "message": "The volume does not exist."}}
        )
    return Response(200, {"volume": evs_volume(volume)})


def parse_ids(text: str) -> list[str]:
    """``['id1','id2']`` (the documented form), also ``["id1", "id2"]`` and ``id1,id2``."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    ids = [part.strip().strip("'\"").strip() for part in inner.split(",")]
    return list(dict.fromkeys(i for i in ids if i))


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise ApiError(400, {"error": {"code": "EVS.2001", "message": f"Invalid limit {text!r}."}})
    return value


def evs_volume(volume: Volume) -> dict:
    """A disk as EVS details it: its status, and its attachment when in use."""
    attachments = []
    if volume.server_id:
        attachments.append(
            {
                "id": volume.id,
                "attachment_id": volume.id,
                "volume_id": volume.id,
                "server_id": volume.server_id,
                "device": volume.device,
                "host_name": "",
                "attached_at": "",
            }
        )
    return {
        "id": volume.id,
        "name": volume.name,
        "status": volume.status,
        "size": volume.size,
        "volume_type": volume.volume_type,
        "availability_zone": AVAILABILITY_ZONES[0],
        "multiattach": volume.multiattach,
        "bootable": "false",
        "shareable": str(volume.multiattach).lower(),
        "attachments": attachments,
        "metadata": {},
        "links": [],
        "service_type": "EVS",
    }
