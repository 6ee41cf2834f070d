"""The BMS client: one method per BMS v1 API call of the seed, plus the native v2.1 calls under
:attr:`BmsClient.nova`.

Every method names the API class whose quota it spends (``create``, ``show``, ``update``,
``attach``, ``detach``, ``job``, ``list``, ``nova``); the caller's ``before_call`` hook receives
that class before each HTTP request, so a global rate limiter can gate it. The client knows
nothing of Celery, Redis or a database.

A create is never sent twice by the client: on a timeout or a dropped connection it raises with
:attr:`~bms.exceptions.CloudTransportError.outcome_unknown` set, and the caller must look for the
server before creating again. The one re-send of any call is :class:`~bms.auth.TokenAuth`'s after
a 401: the gateway refused that request before the service saw it, so nothing was created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from requests.auth import AuthBase

from bms.jobs import Job
from bms.nova import NovaClient
from bms.resources import ResourceClient, sibling_endpoint
from bms.transport import BeforeCall, OnResponse, Transport, json_body, require, unexpected

BatchAction = Literal["os-start", "os-stop", "reboot"]
_BATCH_ACTIONS = ("os-start", "os-stop", "reboot")


@dataclass(frozen=True)
class CreateResult:
    """What ``POST /v1/{project_id}/baremetalservers`` returns: a job, and an order if prePaid."""

    job_id: str
    order_id: str | None = None


@dataclass(frozen=True)
class ServerPage:
    """One page of ``GET .../baremetalservers/detail``: the servers and the total matching."""

    servers: list[dict]
    count: int


def _seg(value: Any) -> str:
    """One URL path segment, fully quoted (an id can never inject a ``/`` or ``?``)."""
    return quote(str(value), safe="")


class BmsClient:
    """Client of the BMS v1 API, with the OpenStack native v2.1 API as :attr:`nova`.

    :param endpoint: BMS v1 base URL, e.g. ``https://bms.cn-north-4.myhuaweicloud.com``.
    :param project_id: the project every path is scoped to.
    :param auth: an :class:`~bms.auth.AkSkAuth` or :class:`~bms.auth.TokenAuth`.
    :param ecs_endpoint: base URL of the native v2.1 API (the ECS endpoint); ``endpoint`` when
        omitted (the simulator serves both).
    :param ims_endpoint: base URL of IMS (images); when omitted, ``endpoint`` with its ``bms.``
        host prefix turned into ``ims.`` (or ``endpoint`` itself if it has none). Likewise
        ``vpc_endpoint`` (VPC) and ``evs_endpoint`` (EVS disks): see :attr:`resources`.
    :param timeout: ``(connect, read)`` seconds, on every call.
    :param before_call: called with the API class before every HTTP request, including the
        client's own GET retries; may block or raise to hold the call back.
    :param get_retries: extra attempts of a GET after a connection error or a 5xx.
    :param retry_backoff: seconds before the first GET retry, doubled for each next one.
    :param on_response: told of each HTTP exchange's API class and status (``None``: no
        answer) once it is over, e.g. to count calls per outcome.
    """

    def __init__(
        self,
        endpoint: str,
        project_id: str,
        auth: AuthBase,
        *,
        ecs_endpoint: str | None = None,
        ims_endpoint: str | None = None,
        vpc_endpoint: str | None = None,
        evs_endpoint: str | None = None,
        timeout: tuple[float, float] = (3.05, 30.0),
        before_call: BeforeCall | None = None,
        get_retries: int = 2,
        retry_backoff: float = 0.2,
        on_response: OnResponse | None = None,
    ) -> None:
        self.project_id = project_id
        common = {
            "timeout": timeout,
            "before_call": before_call,
            "get_retries": get_retries,
            "retry_backoff": retry_backoff,
            "on_response": on_response,
        }
        self._v1 = Transport(endpoint, auth, **common)
        # One session per endpoint family; the native API is a family of its own even when it
        # shares the host, because it must not keep connections alive.
        native = Transport(
            ecs_endpoint or endpoint, auth, headers={"Connection": "close"}, **common
        )
        #: The OpenStack native v2.1 calls (API class ``nova``).
        self.nova = NovaClient(native, project_id)
        given = {"ims": ims_endpoint, "vpc": vpc_endpoint, "evs": evs_endpoint}
        services = {
            name: Transport(url or sibling_endpoint(endpoint, name), auth, **common)
            for name, url in given.items()
        }
        #: The IMS, VPC and EVS reads (API class ``list``).
        self.resources = ResourceClient(**services, project_id=project_id)
        self._servers = f"/v1/{_seg(project_id)}/baremetalservers"

    def __repr__(self) -> str:
        return f"BmsClient(endpoint={self._v1.base_url!r}, project_id={self.project_id!r})"

    def close(self) -> None:
        """Close both sessions."""
        self._v1.close()
        self.nova.close()
        self.resources.close()

    def __enter__(self) -> BmsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- create, show, list, rename --------------------------------------------------------

    def create_servers(self, server: dict) -> CreateResult:
        """Create bare metal servers: ``POST /v1/{project_id}/baremetalservers``.

        API class ``create``. Sent once, never retried by the client.

        :param server: the ``server`` object of the request body (reference section 5).
        :raises CloudAPIError: an error answer (a subclass per status, e.g. :class:`BadRequest`).
        :raises CloudTimeout: no answer in time; ``outcome_unknown`` is True after sending.
        :raises CloudConnectionError: the connection failed or dropped; see ``outcome_unknown``.
        :raises UnexpectedResponse: a success without ``job_id`` (servers may exist).
        """
        response = self._v1.request("create", "POST", self._servers, json={"server": server})
        body = json_body(response)
        job_id = body.get("job_id") or require(response, body, "jobId")
        return CreateResult(job_id=str(job_id), order_id=body.get("order_id"))

    def show_server(self, server_id: str) -> dict:
        """One server's details: ``GET .../baremetalservers/{server_id}``.

        API class ``show``. Retried on connection errors and 5xx.

        :returns: the ``server`` object.
        :raises NotFound: no such server (a deleted one answers with status DELETED for a while).
        :raises CloudAPIError: another error answer.
        :raises CloudTransportError: no answer (after the retries).
        """
        response = self._v1.request("show", "GET", f"{self._servers}/{_seg(server_id)}")
        return require(response, json_body(response), "server")

    def list_servers(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        tags: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> ServerPage:
        """Servers with details: ``GET .../baremetalservers/detail``.

        API class ``list``. Retried on connection errors and 5xx.

        :param name: name filter (the cloud matches it as a pattern, not exactly).
        :param status: status filter, e.g. ``ACTIVE``.
        :param tags: tag filter, e.g. ``__type_baremetal``.
        :param limit: page size (default 25, max 1000 in the cloud).
        :param offset: page number, starting at 1.
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the retries).
        """
        filters = {"name": name, "status": status, "tags": tags, "limit": limit, "offset": offset}
        params = {key: value for key, value in filters.items() if value is not None}
        response = self._v1.request("list", "GET", f"{self._servers}/detail", params=params)
        body = json_body(response)
        servers = require(response, body, "servers")
        return ServerPage(servers=servers, count=int(body.get("count", len(servers))))

    def rename_server(self, server_id: str, name: str) -> dict:
        """Rename a server: ``PUT .../baremetalservers/{server_id}`` (synchronous, no job).

        API class ``update``. Sent once.

        :returns: the updated ``server`` object.
        :raises NotFound: no such server.
        :raises CloudAPIError: another error answer (``BMS.0219`` rename failed).
        :raises CloudTransportError: no answer.
        """
        response = self._v1.request(
            "update",
            "PUT",
            f"{self._servers}/{_seg(server_id)}",
            json={"server": {"name": name}},
        )
        return require(response, json_body(response), "server")

    # --- catalog and limits ----------------------------------------------------------------

    def list_flavors(self, availability_zone: str | None = None) -> list[dict]:
        """Bare metal flavors: ``GET .../baremetalservers/flavors[?availability_zone=]``.

        API class ``list``. Retried on connection errors and 5xx.

        :param availability_zone: only the flavors listed in that zone; each flavor's state
            there is in ``os_extra_specs`` (``cond:operation:az``, else ``cond:operation:status``).
        :returns: the ``flavors``.
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the retries).
        """
        params = {"availability_zone": availability_zone} if availability_zone else None
        response = self._v1.request("list", "GET", f"{self._servers}/flavors", params=params)
        return require(response, json_body(response), "flavors")

    def show_limits(self) -> dict:
        """The account's quotas and use: ``GET .../baremetalservers/limits``.

        API class ``list``. Retried on connection errors and 5xx.

        :returns: the ``absolute`` object (``maxTotalInstances``, ``totalInstancesUsed``,
            ``maxTotalCores``, ``totalCoresUsed``, ``maxTotalRAMSize``, ``totalRAMUsed``, ...).
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer (after the retries).
        """
        response = self._v1.request("list", "GET", f"{self._servers}/limits")
        return require(response, json_body(response), "absolute")

    # --- volumes ---------------------------------------------------------------------------

    def attach_volume(self, server_id: str, volume_id: str, device: str | None = None) -> str:
        """Attach an EVS volume: ``POST .../baremetalservers/{server_id}/attachvolume``.

        API class ``attach``. Sent once.

        :param device: e.g. ``/dev/sdb``; the cloud picks one when omitted.
        :returns: the job id.
        :raises CloudAPIError: an error answer (``BMS.1001`` wrong server state, ...).
        :raises CloudTransportError: no answer; see ``outcome_unknown``.
        """
        attachment = {"volumeId": volume_id}
        if device:
            attachment["device"] = device
        response = self._v1.request(
            "attach",
            "POST",
            f"{self._servers}/{_seg(server_id)}/attachvolume",
            json={"volumeAttachment": attachment},
        )
        return self._job_id(response)

    def detach_volume(self, server_id: str, attachment_id: str) -> str:
        """Detach a volume: ``DELETE .../{server_id}/detachvolume/{attachment_id}``.

        API class ``detach``. Sent once. The attachment id is the EVS volume id.

        :returns: the job id.
        :raises CloudAPIError: an error answer (``BMS.0114`` not attached, ...).
        :raises CloudTransportError: no answer; see ``outcome_unknown``.
        """
        path = f"{self._servers}/{_seg(server_id)}/detachvolume/{_seg(attachment_id)}"
        return self._job_id(self._v1.request("detach", "DELETE", path))

    def list_volume_attachments(self, server_id: str) -> list[dict]:
        """A server's volumes: ``GET .../baremetalservers/{server_id}/os-volume_attachments``.

        API class ``list``. Retried on connection errors and 5xx.

        :returns: the ``volumeAttachments`` (``id``, ``volumeId``, ``serverId``, ``device``).
        :raises CloudAPIError: an error answer (``BMS.1007`` is how the cloud says "none").
        :raises CloudTransportError: no answer (after the retries).
        """
        path = f"{self._servers}/{_seg(server_id)}/os-volume_attachments"
        response = self._v1.request("list", "GET", path)
        return require(response, json_body(response), "volumeAttachments")

    # --- jobs ------------------------------------------------------------------------------

    def show_job(self, job_id: str) -> Job:
        """An asynchronous job's state: ``GET /v1/{project_id}/jobs/{job_id}``.

        API class ``job``. Retried on connection errors and 5xx.

        :raises NotFound: no such job.
        :raises CloudAPIError: another error answer.
        :raises UnexpectedResponse: the body is not a job (no ``status``).
        :raises CloudTransportError: no answer (after the retries).
        """
        path = f"/v1/{_seg(self.project_id)}/jobs/{_seg(job_id)}"
        response = self._v1.request("job", "GET", path)
        try:
            return Job.from_api(json_body(response))
        except ValueError:
            raise unexpected(response, "job body has no status") from None

    # --- batch delete and power ------------------------------------------------------------

    def delete_servers(
        self, server_ids: list[str], *, delete_publicip: bool = False, delete_volume: bool = False
    ) -> str:
        """Delete servers (postPaid only): ``POST .../baremetalservers/delete``.

        API class ``list`` (the batch calls have no class of their own in the quota table).
        Sent once.

        :returns: the job id.
        :raises CloudAPIError: an error answer.
        :raises CloudTransportError: no answer; see ``outcome_unknown``.
        """
        body = {
            "servers": [{"id": server_id} for server_id in server_ids],
            "delete_publicip": delete_publicip,
            "delete_volume": delete_volume,
        }
        response = self._v1.request("list", "POST", f"{self._servers}/delete", json=body)
        return self._job_id(response)

    def batch_action(self, action: BatchAction, server_ids: list[str], type: str = "HARD") -> str:
        """Start, stop or reboot servers: ``POST .../baremetalservers/action``.

        API class ``list`` (see :meth:`delete_servers`). Sent once.

        :param action: ``os-start``, ``os-stop`` or ``reboot``.
        :param type: ``HARD`` or ``SOFT`` for ``os-stop`` and ``reboot`` (ignored by ``os-start``).
        :returns: the job id.
        :raises ValueError: an unknown action.
        :raises CloudAPIError: an error answer (``BMS.0035``-``0040`` wrong state, ...).
        :raises CloudTransportError: no answer; see ``outcome_unknown``.
        """
        if action not in _BATCH_ACTIONS:
            raise ValueError(f"action must be one of {_BATCH_ACTIONS}, not {action!r}")
        spec: dict[str, Any] = {"servers": [{"id": server_id} for server_id in server_ids]}
        if action != "os-start":
            spec["type"] = type
        response = self._v1.request("list", "POST", f"{self._servers}/action", json={action: spec})
        return self._job_id(response)

    @staticmethod
    def _job_id(response) -> str:
        body = json_body(response)
        # changeos answers camelCase "jobId" (reference section 4); accept both spellings.
        return str(body.get("job_id") or require(response, body, "jobId"))
