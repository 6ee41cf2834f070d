"""The default catalog: what exists in the simulated account before any call.

=========================  ===============================================================
availability zones         ``cn-north-4a``, ``cn-north-4b``
flavors                    ``physical.o2.medium`` (32 vCPU), ``physical.s4.large`` (48 vCPU),
                           ``physical.h2.large`` (64 vCPU)
images                     ``a3e5c3e0-0000-4000-8000-000000000001`` (CentOS 7.9 64bit),
                           ``a3e5c3e0-0000-4000-8000-000000000002`` (Ubuntu 22.04 64bit)
VPC                        ``c1d0e0f0-0000-4000-8000-0000000000a1``
subnets (in that VPC)      ``c1d0e0f0-0000-4000-8000-0000000000b1`` (192.168.1.0/24),
                           ``c1d0e0f0-0000-4000-8000-0000000000b2`` (192.168.2.0/24)
key pair                   ``demo-key``
EVS volumes                200 ``available`` 100 GB SSD disks,
                           ``e5e5e5e5-0000-4000-8000-000000000001`` … ``…000000000200``
account limits             100000 servers, 6400000 cores, 40000000000 MB of RAM
=========================  ===============================================================

Every flavor is ``normal`` (on sale) in every zone and every image is an ``active`` bare
metal (``Ironic``) image. ``/_sim/`` adds flavors, images, subnets and volumes at run time and
changes flavor, volume and limit settings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

AVAILABILITY_ZONES = ("cn-north-4a", "cn-north-4b")
DEFAULT_VPC_ID = "c1d0e0f0-0000-4000-8000-0000000000a1"
DEMO_KEY_NAME = "demo-key"
#: A fixed demo public key; its private half is not known to anyone.
DEMO_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmsSimulatorDemoKeyNotARealKey0000000000000 demo-key"
)
DEFAULT_VOLUME_COUNT = 200
#: Flavor states that are on sale (``cond:operation:status`` of the reference, section 9);
#: ``sellout`` is listed but not sold, ``abandon`` is not even listed.
ON_SALE = ("normal", "obt", "promotion")
FLAVOR_STATES = (*ON_SALE, "sellout", "abandon")
#: The account's limits (``GET .../limits``); high enough not to get in a benchmark's way.
DEFAULT_LIMITS = {
    "maxTotalInstances": 100_000,
    "maxTotalCores": 6_400_000,
    "maxTotalRAMSize": 40_000_000_000,
}


def volume_id(number: int) -> str:
    """The id of default volume ``number`` (1-based)."""
    return f"e5e5e5e5-0000-4000-8000-{number:012d}"


@dataclass
class Subnet:
    """A subnet of a VPC, handing out fixed IPs from its CIDR."""

    id: str
    name: str
    cidr: str
    vpc_id: str = DEFAULT_VPC_ID
    used: set[str] = field(default_factory=set)
    #: ``ACTIVE``, ``UNKNOWN`` or ``ERROR`` (VPC API).
    status: str = "ACTIVE"

    def contains(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.cidr)
        except ValueError:
            return False

    def __post_init__(self) -> None:
        # Every host number below this one is in use, so a search for the lowest free address
        # starts here: handing out the n-th address costs O(1) instead of a walk over the n
        # before it (38 ms an address at 10,000 used, under the lock every call waits on).
        # Not a field: it is not saved, and a loaded subnet finds it again on its first search.
        self._lowest_free = FIRST_HOST

    def allocate(self, wanted: str | None = None) -> str | None:
        """``wanted`` if it is free, else the lowest free host address from the tenth on (the
        first ones are the gateway's and DHCP's); None when there is none."""
        if wanted is not None:
            if wanted in self.used or not self.contains(wanted):
                return None
            self.used.add(wanted)
            return wanted
        network = ipaddress.ip_network(self.cidr)
        first, count = _host_range(network)
        number = self._lowest_free
        while number < count:
            address = str(network.network_address + first + number)
            number += 1
            if address not in self.used:
                self.used.add(address)
                self._lowest_free = number
                return address
        self._lowest_free = number
        return None

    def release(self, address: str) -> None:
        self.used.discard(address)
        if self.contains(address):
            network = ipaddress.ip_network(self.cidr)
            first, _count = _host_range(network)
            number = int(ipaddress.ip_address(address)) - int(network.network_address) - first
            self._lowest_free = max(min(self._lowest_free, number), FIRST_HOST)


#: Host numbers below this are the gateway's and DHCP's: never handed out unless asked for.
FIRST_HOST = 9


def _host_range(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """Where ``network.hosts()`` starts (an offset from the network address) and how many it
    yields, without walking it."""
    if network.version == 6:
        return 1, network.num_addresses - 1  # all but the Subnet-Router anycast address
    if network.prefixlen >= 31:
        return 0, network.num_addresses  # point-to-point links and single hosts
    return 1, network.num_addresses - 2  # all but the network and broadcast addresses


@dataclass
class Volume:
    """An EVS cloud disk."""

    id: str
    name: str
    size: int = 100
    volume_type: str = "SSD"
    status: str = "available"
    server_id: str | None = None
    device: str | None = None
    #: Shareable: may attach while ``in-use``.
    multiattach: bool = False

    def to_api(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "volume_type": self.volume_type,
            "status": self.status,
            "server_id": self.server_id,
            "device": self.device,
            "multiattach": self.multiattach,
        }


def flavor(flavor_id: str, vcpus: int, ram_mb: int, disk_gb: int, arch: str = "x86_64") -> dict:
    """A flavor with the fields of reference section 9 (numbers as the API types them)."""
    return {
        "id": flavor_id,
        "name": flavor_id,
        "vcpus": str(vcpus),
        "ram": ram_mb,
        "disk": str(disk_gb),
        "swap": "",
        "rxtx_factor": 1.0,
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "OS-FLV-DISABLED:disabled": False,
        "os-flavor-access:is_public": True,
        "links": [],
        "os_extra_specs": {
            "resource_type": "ironic",
            "capabilities:cpu_arch": arch,
            "capabilities:board_type": flavor_id.split(".")[1],
            "baremetal:extBootType": "LocalDisk",
            "baremetal:__support_evs": "true",
            "cond:operation:status": "normal",
        },
    }


def flavor_status(item: dict, zone: str) -> str:
    """A flavor's state in ``zone``: its ``cond:operation:az`` entry for the zone, else its
    ``cond:operation:status``, else ``normal`` (reference section 9; SDK ``OsExtraSpecs``)."""
    specs = item.get("os_extra_specs", {})
    return zone_states(specs).get(zone, specs.get("cond:operation:status") or "normal")


def zone_states(specs: dict) -> dict[str, str]:
    """``"az0(normal), az1(sellout)"`` -> ``{"az0": "normal", "az1": "sellout"}``."""
    states = {}
    for part in (specs.get("cond:operation:az") or "").split(","):
        zone, _, rest = part.strip().partition("(")
        if zone and rest.endswith(")"):
            states[zone] = rest[:-1]
    return states


def set_flavor_states(item: dict, status: str | None, per_zone: dict[str, str]) -> None:
    """Change a flavor's overall state and/or its state in some zones."""
    specs = item["os_extra_specs"]
    if status is not None:
        specs["cond:operation:status"] = status
    if per_zone:
        merged = {**zone_states(specs), **per_zone}
        specs["cond:operation:az"] = ", ".join(f"{z}({s})" for z, s in merged.items())


def image(
    image_id: str,
    name: str,
    os_type: str = "Linux",
    status: str = "active",
    virtual_env_type: str = "Ironic",
) -> dict:
    return {
        "id": image_id,
        "name": name,
        "os_type": os_type,
        "os_bit": "64",
        "status": status,
        "virtual_env_type": virtual_env_type,
    }


@dataclass
class Catalog:
    """The account's resources other than servers; mutated under the state's lock."""

    availability_zones: list[str] = field(default_factory=lambda: list(AVAILABILITY_ZONES))
    flavors: dict[str, dict] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    vpcs: set[str] = field(default_factory=lambda: {DEFAULT_VPC_ID})
    subnets: dict[str, Subnet] = field(default_factory=dict)
    keypairs: dict[str, dict] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    #: ``maxTotalInstances``, ``maxTotalCores``, ``maxTotalRAMSize`` of ``GET .../limits``.
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def add_volume(self, volume: Volume) -> None:
        self.volumes[volume.id] = volume


def default_catalog() -> Catalog:
    """A fresh copy of the documented default catalog."""
    catalog = Catalog()
    for item in (
        flavor("physical.o2.medium", 32, 193047, 9309),
        flavor("physical.s4.large", 48, 262144, 4800),
        flavor("physical.h2.large", 64, 393216, 7680),
    ):
        catalog.flavors[item["id"]] = item
    for item in (
        image("a3e5c3e0-0000-4000-8000-000000000001", "CentOS 7.9 64bit"),
        image("a3e5c3e0-0000-4000-8000-000000000002", "Ubuntu 22.04 64bit"),
    ):
        catalog.images[item["id"]] = item
    for subnet in (
        Subnet("c1d0e0f0-0000-4000-8000-0000000000b1", "subnet-a", "192.168.1.0/24"),
        Subnet("c1d0e0f0-0000-4000-8000-0000000000b2", "subnet-b", "192.168.2.0/24"),
    ):
        catalog.subnets[subnet.id] = subnet
    catalog.keypairs[DEMO_KEY_NAME] = {
        "name": DEMO_KEY_NAME,
        "public_key": DEMO_PUBLIC_KEY,
        "fingerprint": "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
        "type": "ssh",
    }
    for number in range(1, DEFAULT_VOLUME_COUNT + 1):
        catalog.add_volume(Volume(volume_id(number), f"evs-{number:03d}"))
    return catalog
