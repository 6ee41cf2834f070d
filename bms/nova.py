"""The OpenStack native (Nova v2.1) calls of the seed, on the ECS endpoint (reference section 11).

Every call spends the ``nova`` API class. Paths are ``/v2.1/{project_id}/...``; the transport
sends ``Connection: close`` (no keep-alive on the native APIs), and the tag calls carry
microversion 2.26, below which Nova does not know server tags.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bms.exceptions import NotFound
from bms.transport import Transport, json_body, require

API_CLASS = "nova"
TAGS_MICROVERSION = "2.26"
_TAG_HEADERS = {
    "X-OpenStack-Nova-API-Version": TAGS_MICROVERSION,
    "OpenStack-API-Version": f"compute {TAGS_MICROVERSION}",
}


def _seg(value: Any) -> str:
    """One URL path segment, fully quoted."""
    return quote(str(value), safe="")


class NovaClient:
    """The native v2.1 calls; reached as ``BmsClient(...).nova``.

    All methods spend API class ``nova``. GETs are retried on connection errors and 5xx; POST,
    PUT and DELETE are sent once. Unless stated otherwise each method raises
    :class:`~bms.exceptions.CloudAPIError` (a subclass per status, e.g. ``NotFound``) for an
    error answer and :class:`~bms.exceptions.CloudTransportError` when no answer arrived.
    """

    def __init__(self, transport: Transport, project_id: str) -> None:
        self._transport = transport
        self._root = f"/v2.1/{_seg(project_id)}"

    def close(self) -> None:
        """Close the native API's session."""
        self._transport.close()

    def _call(self, method: str, path: str, **kwargs: Any):
        return self._transport.request(API_CLASS, method, self._root + path, **kwargs)

    def _get(self, path: str, key: str, **kwargs: Any) -> Any:
        response = self._call("GET", path, **kwargs)
        return require(response, json_body(response), key)

    @staticmethod
    def _server(server_id: str) -> str:
        return f"/servers/{_seg(server_id)}"

    # --- servers ---------------------------------------------------------------------------

    def create_server(self, server: dict) -> dict:
        """Create a server: ``POST /servers``. API class ``nova``; sent once, never retried.

        :returns: the ``server`` object (``id``, ``links``, ``adminPass``...).
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` says the server may exist.
        """
        response = self._call("POST", "/servers", json={"server": server})
        return require(response, json_body(response), "server")

    def show_server(self, server_id: str) -> dict:
        """One server: ``GET /servers/{id}``. API class ``nova``.

        :raises NotFound: no such server.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(self._server(server_id), "server")

    def list_servers(self, *, detail: bool = True, **filters: Any) -> list[dict]:
        """Servers: ``GET /servers/detail`` (or ``/servers`` with ``detail=False``).

        API class ``nova``. ``filters`` are Nova's query parameters (``name``, ``status``,
        ``tags``, ``limit``, ``marker``...); None values are left out.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        params = {key: value for key, value in filters.items() if value is not None}
        path = "/servers/detail" if detail else "/servers"
        return self._get(path, "servers", params=params)

    def delete_server(self, server_id: str) -> None:
        """Delete a server: ``DELETE /servers/{id}``. API class ``nova``; sent once.

        :raises NotFound: no such server.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._call("DELETE", self._server(server_id))

    def _action(self, server_id: str, body: dict) -> None:
        self._call("POST", f"{self._server(server_id)}/action", json=body)

    def start_server(self, server_id: str) -> None:
        """Power on: ``POST /servers/{id}/action {"os-start": {}}``. API class ``nova``.

        :raises Conflict: the server is not stopped.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._action(server_id, {"os-start": {}})

    def stop_server(self, server_id: str) -> None:
        """Power off: ``POST /servers/{id}/action {"os-stop": {}}``. API class ``nova``.

        :raises Conflict: the server is not running.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._action(server_id, {"os-stop": {}})

    def reboot_server(self, server_id: str, type: str = "HARD") -> None:
        """Reboot: ``POST /servers/{id}/action {"reboot": {"type": ...}}``. API class ``nova``.

        Only ``HARD`` works on bare metal.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._action(server_id, {"reboot": {"type": type}})

    def list_ips(self, server_id: str) -> dict:
        """A server's addresses by network: ``GET /servers/{id}/ips``. API class ``nova``.

        :returns: the ``addresses`` object, ``{network: [{"version": 4, "addr": ...}]}``.
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(f"{self._server(server_id)}/ips", "addresses")

    # --- flavors ---------------------------------------------------------------------------

    def list_flavors(self, detail: bool = True) -> list[dict]:
        """Flavors: ``GET /flavors/detail`` (or ``/flavors``). API class ``nova``.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get("/flavors/detail" if detail else "/flavors", "flavors")

    def show_flavor(self, flavor_id: str) -> dict:
        """One flavor: ``GET /flavors/{id}``. API class ``nova``.

        :raises NotFound: no such flavor.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(f"/flavors/{_seg(flavor_id)}", "flavor")

    # --- interfaces ------------------------------------------------------------------------

    def list_interfaces(self, server_id: str) -> list[dict]:
        """A server's NICs: ``GET /servers/{id}/os-interface``. API class ``nova``.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(f"{self._server(server_id)}/os-interface", "interfaceAttachments")

    def show_interface(self, server_id: str, port_id: str) -> dict:
        """One NIC: ``GET /servers/{id}/os-interface/{port_id}``. API class ``nova``.

        :raises NotFound: no such server or port.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        path = f"{self._server(server_id)}/os-interface/{_seg(port_id)}"
        return self._get(path, "interfaceAttachment")

    # --- volume attachments ----------------------------------------------------------------

    def list_volume_attachments(self, server_id: str) -> list[dict]:
        """A server's volumes: ``GET /servers/{id}/os-volume_attachments``. API class ``nova``.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        path = f"{self._server(server_id)}/os-volume_attachments"
        return self._get(path, "volumeAttachments")

    def attach_volume(self, server_id: str, volume_id: str, device: str | None = None) -> dict:
        """Attach a volume: ``POST /servers/{id}/os-volume_attachments``. API class ``nova``;
        sent once.

        :returns: the ``volumeAttachment`` object.
        :raises BadRequest: the volume is unknown or in use.
        :raises Conflict: the server's state forbids attaching.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        attachment = {"volumeId": volume_id}
        if device:
            attachment["device"] = device
        path = f"{self._server(server_id)}/os-volume_attachments"
        response = self._call("POST", path, json={"volumeAttachment": attachment})
        return require(response, json_body(response), "volumeAttachment")

    def detach_volume(self, server_id: str, volume_id: str) -> None:
        """Detach: ``DELETE /servers/{id}/os-volume_attachments/{volume_id}``. API class
        ``nova``; sent once.

        :raises NotFound: the volume is not attached to this server.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        path = f"{self._server(server_id)}/os-volume_attachments/{_seg(volume_id)}"
        self._call("DELETE", path)

    # --- key pairs -------------------------------------------------------------------------

    def list_keypairs(self) -> list[dict]:
        """Key pairs: ``GET /os-keypairs``. API class ``nova``.

        :returns: the key pairs, unwrapped from Nova's ``{"keypair": {...}}`` elements.
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        wrapped = self._get("/os-keypairs", "keypairs")
        return [item.get("keypair", item) for item in wrapped]

    def show_keypair(self, name: str) -> dict:
        """One key pair: ``GET /os-keypairs/{name}``. API class ``nova``.

        :raises NotFound: no such key pair.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(f"/os-keypairs/{_seg(name)}", "keypair")

    def create_keypair(self, name: str, public_key: str | None = None) -> dict:
        """Create or import a key pair: ``POST /os-keypairs``. API class ``nova``; sent once.

        :param public_key: import this key; when omitted the cloud generates a pair and the
            answer carries ``private_key`` (only this once).
        :raises Conflict: a key pair of that name exists.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        keypair = {"name": name}
        if public_key:
            keypair["public_key"] = public_key
        response = self._call("POST", "/os-keypairs", json={"keypair": keypair})
        return require(response, json_body(response), "keypair")

    def delete_keypair(self, name: str) -> None:
        """Delete a key pair: ``DELETE /os-keypairs/{name}``. API class ``nova``; sent once.

        :raises NotFound: no such key pair.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._call("DELETE", f"/os-keypairs/{_seg(name)}")

    # --- tags (microversion 2.26) ----------------------------------------------------------

    def _tags(self, server_id: str) -> str:
        return f"{self._server(server_id)}/tags"

    def list_tags(self, server_id: str) -> list[str]:
        """A server's tags: ``GET /servers/{id}/tags``. API class ``nova``.

        :raises NotFound: no such server.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        return self._get(self._tags(server_id), "tags", headers=_TAG_HEADERS)

    def replace_tags(self, server_id: str, tags: list[str]) -> list[str]:
        """Replace all tags: ``PUT /servers/{id}/tags``. API class ``nova``; sent once.

        Keep ``__type_baremetal`` in ``tags``: it marks the server as bare metal.

        :returns: the server's tags after the call.
        :raises BadRequest: a tag breaks the rules (too long, ``/`` or ``,``, too many).
        :raises Conflict: the server's state forbids tag changes.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        response = self._call(
            "PUT", self._tags(server_id), json={"tags": list(tags)}, headers=_TAG_HEADERS
        )
        return require(response, json_body(response), "tags")

    def add_tag(self, server_id: str, tag: str) -> None:
        """Add one tag: ``PUT /servers/{id}/tags/{tag}`` (201 new, 204 present). API class
        ``nova``; sent once, and idempotent.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._call("PUT", f"{self._tags(server_id)}/{_seg(tag)}", headers=_TAG_HEADERS)

    def check_tag(self, server_id: str, tag: str) -> bool:
        """Whether a server has a tag: ``GET /servers/{id}/tags/{tag}``. API class ``nova``.

        :returns: True on 204, False on 404. Nova answers 404 for an unknown server as well, so
            False also covers "no such server".
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the GET retries).
        """
        try:
            self._call("GET", f"{self._tags(server_id)}/{_seg(tag)}", headers=_TAG_HEADERS)
        except NotFound:
            return False
        return True

    def delete_tag(self, server_id: str, tag: str) -> None:
        """Remove one tag: ``DELETE /servers/{id}/tags/{tag}``. API class ``nova``; sent once.

        :raises NotFound: the server does not have this tag.
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._call("DELETE", f"{self._tags(server_id)}/{_seg(tag)}", headers=_TAG_HEADERS)

    def delete_all_tags(self, server_id: str) -> None:
        """Remove every tag: ``DELETE /servers/{id}/tags``. API class ``nova``; sent once.

        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer; ``outcome_unknown`` when it may have been applied.
        """
        self._call("DELETE", self._tags(server_id), headers=_TAG_HEADERS)
