"""A small stdlib client for ``/_sim/``, for tests, benchmarks and the demo (in-process or
against a simulator running in another process)."""

from __future__ import annotations

import json
import urllib.request


class SimulatorControl:
    """Reads and steers a simulator through ``/_sim/`` at ``base_url``."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_sim/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"{}")

    def servers(self) -> list[dict]:
        """Every server ever created (deleted ones too), each with its status ``history``."""
        return self._call("GET", "servers")["servers"]

    def server(self, server_id: str) -> dict:
        return self._call("GET", f"servers/{server_id}")["server"]

    def counters(self) -> dict[str, dict[str, int]]:
        """Per API class: ``calls``, ``throttled`` (429), ``faults`` (injected), ``errors``."""
        return self._call("GET", "counters")["counters"]

    def faults(self) -> dict:
        return self._call("GET", "faults")

    def set_faults(self, **changes) -> dict:
        """Change some fault settings (``create_fail_share=0.5``); the generators are reseeded."""
        return self._call("PUT", "faults", changes)

    def quotas(self) -> dict[str, str]:
        return self._call("GET", "quotas")["quotas"]

    def set_quotas(self, spec: str) -> dict[str, str]:
        """``create=20/second;show=5000/minute``; classes left out get the default quota."""
        return self._call("PUT", "quotas", {"spec": spec})["quotas"]

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def volumes(self) -> list[dict]:
        return self._call("GET", "volumes")["volumes"]

    def add_volumes(self, count: int = 1, **fields) -> list[dict]:
        return self._call("POST", "volumes", {"count": count, **fields})["volumes"]

    def add_flavor(self, flavor_id: str, vcpus: int, ram: int, disk: int) -> dict:
        body = {"id": flavor_id, "vcpus": vcpus, "ram": ram, "disk": disk}
        return self._call("POST", "flavors", body)["flavor"]

    def add_image(self, image_id: str, name: str, **fields) -> dict:
        """Add an image; ``status`` and ``virtual_env_type`` may be given."""
        return self._call("POST", "images", {"id": image_id, "name": name, **fields})["image"]

    def add_subnet(self, subnet_id: str, cidr: str, vpc_id: str | None = None, **fields) -> dict:
        """Add a subnet (and its VPC if new); ``status`` may be given."""
        body = {"id": subnet_id, "cidr": cidr, **({"vpc_id": vpc_id} if vpc_id else {}), **fields}
        return self._call("POST", "subnets", body)["subnet"]

    def set_flavor(self, flavor_id: str, **states) -> dict:
        """``status="sellout"`` and/or ``az_status={"cn-north-4b": "abandon"}``."""
        return self._call("PUT", f"flavors/{flavor_id}", states)["flavor"]

    def set_volume(self, volume_id: str, **fields) -> dict:
        """``status="in-use"`` and/or ``multiattach=True``."""
        return self._call("PUT", f"volumes/{volume_id}", fields)["volume"]

    def limits(self) -> dict[str, int]:
        return self._call("GET", "limits")["limits"]

    def set_limits(self, **limits: int) -> dict[str, int]:
        """``maxTotalInstances``, ``maxTotalCores``, ``maxTotalRAMSize`` (any subset)."""
        return self._call("PUT", "limits", limits)["limits"]

    def config(self) -> dict:
        return self._call("GET", "config")
