"""How servers, interfaces and volume attachments look on the wire, in v1 and Nova shapes."""

from __future__ import annotations

from simulator.state import CloudState, Server


def addresses(server: Server, version_type: type = str) -> dict[str, list[dict]]:
    """``addresses`` keyed by VPC id; v1 types ``version`` as a string, Nova as an int."""
    result: dict[str, list[dict]] = {}
    for port in server.ports:
        result.setdefault(port.vpc_id, []).append(
            {
                "version": version_type(4),
                "addr": port.ip_address,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                "OS-EXT-IPS:port_id": port.port_id,
            }
        )
    return result


def flavor_summary(state: CloudState, flavor_id: str) -> dict:
    flavor = state.catalog.flavors.get(flavor_id, {})
    return {
        "id": flavor_id,
        "name": flavor_id,
        "disk": str(flavor.get("disk", "")),
        "vcpus": str(flavor.get("vcpus", "")),
        "ram": str(flavor.get("ram", "")),
    }


def server_detail(state: CloudState, server: Server) -> dict:
    """The v1 ``ServerDetails`` of reference section 6."""
    image = state.catalog.images.get(server.image_id, {})
    return {
        "id": server.id,
        "name": server.name,
        "status": server.status,
        "progress": 100 if server.status == "ACTIVE" else 0,
        "tenant_id": state.config.project_id,
        "user_id": server.metadata.get("op_svc_userid", ""),
        "created": server.created,
        "updated": server.updated,
        "hostId": server.id.replace("-", "")[:24],
        "host_status": "UP",
        "addresses": addresses(server),
        "flavor": flavor_summary(state, server.flavor_id),
        "image": {"id": server.image_id, "name": image.get("name", "")},
        "key_name": server.key_name or "",
        "security_groups": [{"name": "default", "id": "default"}],
        "metadata": dict(server.metadata),
        "tags": server.all_tags(),
        "sys_tags": [{"key": "_sys_enterprise_project_id", "value": "0"}],
        "locked": False,
        "config_drive": "",
        "description": "",
        "accessIPv4": "",
        "accessIPv6": "",
        "fault": server.fault,
        "enterprise_project_id": "0",
        "os:scheduler_hints": {},
        "OS-EXT-STS:vm_state": server.vm_state,
        "OS-EXT-STS:task_state": server.task_state,
        "OS-EXT-STS:power_state": server.power_state,
        "OS-EXT-AZ:availability_zone": server.availability_zone,
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-SRV-ATTR:host": "bms.sim",
        "OS-EXT-SRV-ATTR:instance_name": f"instance-{server.id[:8]}",
        "OS-EXT-SRV-ATTR:hypervisor_hostname": "sim@1",
        "OS-EXT-SRV-ATTR:hostname": server.name,
        "OS-EXT-SRV-ATTR:reservation_id": "r-" + server.id[:8],
        "OS-EXT-SRV-ATTR:launch_index": 0,
        "OS-EXT-SRV-ATTR:root_device_name": "/dev/sda",
        "OS-EXT-SRV-ATTR:kernel_id": "",
        "OS-EXT-SRV-ATTR:ramdisk_id": "",
        "OS-EXT-SRV-ATTR:user_data": "",
        "OS-SRV-USG:launched_at": server.created,
        "OS-SRV-USG:terminated_at": "",
        "os-extended-volumes:volumes_attached": volumes_attached(server),
    }


def slim_server(state: CloudState, server: Server) -> dict:
    """The v1.1 list record (``ServerListDetails``)."""
    return {
        "id": server.id,
        "user_id": server.metadata.get("op_svc_userid", ""),
        "name": server.name,
        "created": server.created,
        "updated": server.updated,
        "tenant_id": state.config.project_id,
        "flavor": flavor_summary(state, server.flavor_id),
        "status": server.status,
        "task_state": server.task_state,
        "vm_state": server.vm_state,
        "availability_zone": server.availability_zone,
        "fault": server.fault,
        "in_recycle_bin": False,
    }


def volumes_attached(server: Server) -> list[dict]:
    system = {"id": f"sys-{server.id}", "delete_on_termination": "true", "bootIndex": "0"}
    attached = [{**system, "device": "/dev/sda"}]
    for volume_id, device in server.volumes.items():
        attached.append(
            {"id": volume_id, "delete_on_termination": "false", "bootIndex": "", "device": device}
        )
    return attached


def volume_attachments(server: Server) -> list[dict]:
    """Data volumes only; the attachment id is the volume id (reference section 8)."""
    return [
        {"id": volume_id, "serverId": server.id, "volumeId": volume_id, "device": device}
        for volume_id, device in server.volumes.items()
    ]


def interface_attachments(server: Server) -> list[dict]:
    return [interface_attachment(port) for port in server.ports]


def interface_attachment(port) -> dict:
    return {
        "port_state": "ACTIVE",
        "fixed_ips": [{"subnet_id": port.subnet_id, "ip_address": port.ip_address}],
        "net_id": port.subnet_id,
        "port_id": port.port_id,
        "mac_addr": port.mac_address,
    }


def introspection(state: CloudState, server: Server) -> dict:
    """What ``/_sim/servers`` shows: the server, its history, and whether it is gone."""
    return {
        "id": server.id,
        "name": server.name,
        "status": server.status,
        "task_state": server.task_state,
        "flavor": server.flavor_id,
        "image": server.image_id,
        "availability_zone": server.availability_zone,
        "metadata": dict(server.metadata),
        "tags": list(server.tags),
        "kv_tags": dict(server.kv_tags),
        "volumes": [{"id": v, "device": d} for v, d in server.volumes.items()],
        "addresses": [port.ip_address for port in server.ports],
        "fault": server.fault,
        "created": server.created,
        "deleted": server.deleted,
        "purged": server.purged,
        "history": list(server.history),
    }
