"""Reads of the services a bare metal server is made of: IMS images, VPC networks, EVS disks.

Reached as ``BmsClient(...).resources``. Each service has its own endpoint (``ims.{region}``,
``vpc.{region}``, ``evs.{region}``; :func:`sibling_endpoint` derives them from the BMS one) and
its own session. Every call spends API class ``list``: the orchestrator keeps one budget for
reads, although in the cloud these services have quotas of their own. GETs are retried on
connection errors and 5xx; each method raises :class:`~bms.exceptions.CloudAPIError` (a
subclass per status) for an error answer and :class:`~bms.exceptions.CloudTransportError` when
no answer arrived.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from bms.transport import Transport, json_body, require

API_CLASS = "list"
#: EVS details at most this many disks per ``ids`` filter.
MAX_VOLUME_IDS = 60


def _seg(value: Any) -> str:
    return quote(str(value), safe="")


def sibling_endpoint(endpoint: str, service: str) -> str:
    """The endpoint of ``service`` in the region of a BMS endpoint: ``https://bms.X`` becomes
    ``https://{service}.X``; any other endpoint (a simulator, a proxy) is kept as it is."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if not host.startswith("bms."):
        return endpoint
    netloc = parts.netloc.replace(host, f"{service}.{host[4:]}", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class ResourceClient:
    """IMS, VPC and EVS reads, one transport (session) per service."""

    def __init__(self, ims: Transport, vpc: Transport, evs: Transport, project_id: str) -> None:
        self._ims, self._vpc, self._evs = ims, vpc, evs
        self._project = _seg(project_id)

    def close(self) -> None:
        for transport in (self._ims, self._vpc, self._evs):
            transport.close()

    def list_images(self, *, image_id: str | None = None, **filters: str) -> list[dict]:
        """Images: ``GET /v2/cloudimages`` (IMS), e.g. ``image_id=...``. An unknown id gives an
        empty list, not an error.

        :param filters: other IMS filters (``status``, ``virtual_env_type``, ...).
        :returns: the ``images`` (``id``, ``status``, ``virtual_env_type``, ...).
        """
        params = {**filters, **({"id": image_id} if image_id is not None else {})}
        response = self._ims.request(API_CLASS, "GET", "/v2/cloudimages", params=params)
        return require(response, json_body(response), "images")

    def show_vpc(self, vpc_id: str) -> dict:
        """One VPC: ``GET /v1/{project_id}/vpcs/{vpc_id}``.

        :raises NotFound: no such VPC (``VPC.0003``).
        """
        path = f"/v1/{self._project}/vpcs/{_seg(vpc_id)}"
        response = self._vpc.request(API_CLASS, "GET", path)
        return require(response, json_body(response), "vpc")

    def show_subnet(self, subnet_id: str) -> dict:
        """One subnet: ``GET /v1/{project_id}/subnets/{subnet_id}`` (its ``vpc_id``, ``status``).

        :raises NotFound: no such subnet.
        """
        path = f"/v1/{self._project}/subnets/{_seg(subnet_id)}"
        response = self._vpc.request(API_CLASS, "GET", path)
        return require(response, json_body(response), "subnet")

    def show_volume(self, volume_id: str) -> dict:
        """One disk: ``GET /v2/{project_id}/cloudvolumes/{volume_id}`` (EVS).

        Its ``status`` (``available``, ``attaching``, ``in-use``, ...) tells a finished attach
        from one still running, which a server's attachment list does not.

        :returns: the ``volume`` (``id``, ``status``, ``attachments`` with ``server_id``).
        :raises NotFound: no such disk.
        """
        path = f"/v2/{self._project}/cloudvolumes/{_seg(volume_id)}"
        response = self._evs.request(API_CLASS, "GET", path)
        return require(response, json_body(response), "volume")

    def list_volumes(self, volume_ids: list[str]) -> list[dict]:
        """Disks by id: ``GET /v2/{project_id}/cloudvolumes/detail?ids=['a','b']`` (EVS). Ids
        the cloud does not know are left out of the answer.

        :param volume_ids: at most :data:`MAX_VOLUME_IDS`.
        :returns: the ``volumes`` (``id``, ``status``, ``multiattach``, ``attachments``, ...).
        :raises ValueError: more ids than one call may carry.
        """
        if len(volume_ids) > MAX_VOLUME_IDS:
            raise ValueError(f"at most {MAX_VOLUME_IDS} volume ids per call")
        listed = "[" + ",".join(f"'{volume_id}'" for volume_id in volume_ids) + "]"
        params = {"ids": listed, "limit": max(len(volume_ids), 1)}
        path = f"/v2/{self._project}/cloudvolumes/detail"
        response = self._evs.request(API_CLASS, "GET", path, params=params)
        return require(response, json_body(response), "volumes")
