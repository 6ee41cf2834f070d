"""The cloud client's exception tree and the one function that maps an HTTP response onto it.

Everything the client raises is a :class:`CloudError`. Two families sit under it:

* :class:`CloudAPIError`: the cloud answered with an HTTP error. It carries the HTTP status, the
  cloud's error code (``BMS.0222``, ``APIGW.0308``, a Nova fault name such as ``itemNotFound``, or
  the HTTP status as a string when the body has none), the message, the request id, the method
  and the URL. One subclass per status family.
* :class:`CloudTimeout` / :class:`CloudConnectionError`: no usable answer arrived. They say
  whether the request may have reached the server (:attr:`~CloudTransportError.outcome_unknown`
  for a request that changes state): a create in that situation must be looked up before it is
  sent again.

``transient`` is a property of the class, never a guess at the call site: True for the errors
worth retrying later (409, 429, 5xx, timeouts, connection errors). :class:`TransientCloudError`
is the matching mixin, so a task wrapper can write ``autoretry_for=(TransientCloudError,)``.

Secrets never reach these objects: an exception holds the response's status, code, message and
request id, the request's method and URL, and nothing of the request's headers or body.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.packages.urllib3.exceptions import ConnectTimeoutError  # requests' own alias

#: Methods whose repetition cannot change anything in the cloud.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CloudError(Exception):
    """Root of every error the cloud client raises."""

    #: Whether trying the same call again later may succeed (a property of the class).
    transient: bool = False


class TransientCloudError(CloudError):
    """Mixin marking the errors worth retrying later: 409, 429, 5xx, timeouts, connection errors."""

    transient = True


class CloudAPIError(CloudError):
    """The cloud answered with an HTTP error status.

    :ivar status_code: the HTTP status.
    :ivar error_code: the cloud's code (``BMS.xxxx``, ``APIGW.xxxx``, a Nova fault name) or the
        HTTP status as a string when the body carries none.
    :ivar message: the cloud's human-readable message (may be empty).
    :ivar request_id: ``X-Request-Id`` of the response, or the gateway body's ``request_id``.
    :ivar method: the request's HTTP method.
    :ivar url: the request's URL.
    """

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.message = message
        self.request_id = request_id
        self.method = method
        self.url = url
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        request_id = f" request_id={self.request_id}" if self.request_id else ""
        return f"HTTP {self.status_code} {self.error_code}: {self.message}{where}{request_id}"

    def __reduce__(self):
        # Exceptions travel through Celery's result/retry machinery: keep them picklable with
        # all their fields (Exception's default reduce would pass only the message).
        return (
            self.__class__,
            (
                self.status_code,
                self.error_code,
                self.message,
                self.request_id,
                self.method,
                self.url,
            ),
        )


class BadRequest(CloudAPIError):
    """HTTP 400 (and other 4xx without a class of their own): the request itself is wrong."""


class AuthenticationError(CloudAPIError):
    """HTTP 401: the signature or token was refused (``APIGW.0301``)."""


class Forbidden(CloudAPIError):
    """HTTP 403: the caller is not allowed to do this (``APIGW.0302``, ``BMS.0033``)."""


class NotFound(CloudAPIError):
    """HTTP 404: no such resource (or no such API: ``APIGW.0101``)."""


class Conflict(TransientCloudError, CloudAPIError):
    """HTTP 409: the resource is in a state that forbids the call right now."""


class Throttled(TransientCloudError, CloudAPIError):
    """HTTP 429: the API class's quota is used up (``APIGW.0308``).

    :ivar retry_after: seconds to wait, from the ``Retry-After`` header, or None when absent.
    :ivar api_class: the API class of the throttled call, set by the transport (one task may
        make calls of several classes: a create's marker look-up is a ``list`` call).
    """

    def __init__(self, *args: Any, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        self.api_class: str | None = None
        super().__init__(*args)

    def __reduce__(self):
        cls, args = super().__reduce__()
        return (_rebuild_throttled, (cls, args, self.retry_after))


def _rebuild_throttled(cls: type[Throttled], args: tuple, retry_after: float | None) -> Throttled:
    return cls(*args, retry_after=retry_after)


class ServerError(TransientCloudError, CloudAPIError):
    """HTTP 5xx: the cloud failed; the same call may work later."""


class UnexpectedResponse(CloudAPIError):
    """A success status whose body is not what the API documents (no JSON, a missing key)."""


class CloudTransportError(TransientCloudError):
    """No usable HTTP answer: base of :class:`CloudTimeout` and :class:`CloudConnectionError`.

    :ivar method: the request's HTTP method.
    :ivar url: the request's URL.
    :ivar may_have_reached_server: False only when the request certainly never left (connection
        refused, connect timeout, unknown host); True when it may have been received and acted
        on (read timeout, connection dropped after sending).
    """

    def __init__(
        self, message: str, method: str, url: str, may_have_reached_server: bool = True
    ) -> None:
        self.method = method
        self.url = url
        self.may_have_reached_server = may_have_reached_server
        super().__init__(message)

    @property
    def outcome_unknown(self) -> bool:
        """True when a state-changing request may have been carried out: look before re-sending."""
        return self.may_have_reached_server and self.method.upper() not in SAFE_METHODS

    def __reduce__(self):
        return (
            self.__class__,
            (self.args[0], self.method, self.url, self.may_have_reached_server),
        )


class CloudTimeout(CloudTransportError):
    """The connect or the read timed out."""


class CloudConnectionError(CloudTransportError):
    """The connection could not be made, or broke before an answer arrived."""


_CLASS_BY_STATUS: dict[int, type[CloudAPIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: Throttled,
}


def error_class_for_status(status_code: int) -> type[CloudAPIError]:
    """The :class:`CloudAPIError` subclass for an HTTP error status (>= 400)."""
    if status_code >= 500:
        return ServerError
    return _CLASS_BY_STATUS.get(status_code, BadRequest)


def parse_error_body(body: Any, status_code: int) -> tuple[str, str, str | None]:
    """Pull ``(error_code, message, request_id)`` out of a decoded error body.

    Handles the three shapes of the reference (section 3.1):

    * BMS v1: ``{"error": {"code": "BMS.0222", "message": "..."}}``
    * API gateway: ``{"error_code": "APIGW.0308", "error_msg": "...", "request_id": "..."}``
    * Nova: ``{"itemNotFound": {"code": 404, "message": "..."}}`` (the fault name is the code)

    Anything else (no JSON, another shape) gives the HTTP status as the code.
    """
    if not isinstance(body, dict):
        return str(status_code), "", None
    if "error_code" in body or "error_msg" in body:
        return (
            str(body.get("error_code") or status_code),
            str(body.get("error_msg") or ""),
            body.get("request_id"),
        )
    nested = body.get("error")
    if isinstance(nested, dict):
        code = nested.get("code") or nested.get("error_code") or status_code
        message = nested.get("message") or nested.get("error_msg") or ""
        return str(code), str(message), nested.get("request_id")
    if len(body) == 1:
        fault_name, fault = next(iter(body.items()))
        if isinstance(fault, dict) and "message" in fault:
            return str(fault_name), str(fault.get("message") or ""), None
    if "code" in body and "message" in body:
        return str(body["code"]), str(body["message"]), None
    return str(status_code), "", None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _decode_json(response: requests.Response) -> Any:
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None


def error_from_response(response: requests.Response) -> CloudAPIError | None:
    """The exception describing an error response, or None for a status below 400."""
    status = response.status_code
    if status < 400:
        return None
    error_code, message, body_request_id = parse_error_body(_decode_json(response), status)
    request_id = (
        response.headers.get("X-Request-Id")
        or response.headers.get("x-openstack-request-id")
        or body_request_id
    )
    request = response.request
    args = (
        status,
        error_code,
        message,
        request_id,
        request.method if request is not None else None,
        request.url if request is not None else response.url,
    )
    cls = error_class_for_status(status)
    if cls is Throttled:
        return Throttled(*args, retry_after=parse_retry_after(response.headers.get("Retry-After")))
    return cls(*args)


def raise_from_response(response: requests.Response) -> None:
    """Raise the :class:`CloudAPIError` subclass for an error response; return for a success.

    :raises BadRequest: 400 and unmapped 4xx.
    :raises AuthenticationError: 401.
    :raises Forbidden: 403.
    :raises NotFound: 404.
    :raises Conflict: 409.
    :raises Throttled: 429, with ``retry_after`` from ``Retry-After``.
    :raises ServerError: 5xx.
    """
    error = error_from_response(response)
    if error is not None:
        raise error


def error_from_transport(
    exc: requests.RequestException, method: str, url: str
) -> CloudTransportError:
    """Translate a ``requests`` transport failure into :class:`CloudTimeout` or
    :class:`CloudConnectionError`, saying whether the request may have reached the server.

    The message names the failure's class only: the underlying text can hold the full URL with
    its query, never a secret, but we keep it short and predictable.
    """
    never_sent = _certainly_not_sent(exc)
    if isinstance(exc, requests.Timeout):
        kind = "connect timeout" if never_sent else "read timeout"
        return CloudTimeout(f"{kind} on {method} {url}", method, url, not never_sent)
    detail = "connection failed" if never_sent else "connection dropped before an answer"
    return CloudConnectionError(f"{detail} on {method} {url}", method, url, not never_sent)


def _certainly_not_sent(exc: requests.RequestException) -> bool:
    """True only when the failure happened before any byte of the request left this process."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    # requests wraps connect-stage failures as MaxRetryError(reason=NewConnectionError/
    # ConnectTimeoutError/NameResolutionError), all ConnectTimeoutError subclasses. A failure after
    # sending (RemoteDisconnected, reset while reading) arrives as ProtocolError instead.
    for arg in exc.args:
        reason = getattr(arg, "reason", None)
        if isinstance(reason, ConnectTimeoutError):
            return True
    return False
