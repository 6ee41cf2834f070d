"""One endpoint family's HTTP plumbing: a long-lived session, a base URL, and the one
:meth:`Transport.request` every API call goes through.

:meth:`Transport.request` calls the caller's gate with the call's API class before each HTTP
request it sends, applies the ``(connect, read)`` timeout, maps failures onto
:mod:`bms.exceptions`, and logs method, path, status and request id at DEBUG (never headers or
bodies). It retries only what cannot duplicate work: a GET that met a connection error, a connect
timeout or a 5xx. A POST, PUT or DELETE is sent exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from bms import auth as auth_module
from bms.exceptions import (
    SAFE_METHODS,
    CloudConnectionError,
    CloudTransportError,
    ServerError,
    Throttled,
    UnexpectedResponse,
    error_from_transport,
    raise_from_response,
)

logger = logging.getLogger("bms.client")

USER_AGENT = f"bms-orchestrator/0.1 (+requests/{requests.__version__})"

#: What counts as "no usable answer". Other ``requests`` errors (an invalid URL, a missing
#: schema) are configuration mistakes and propagate unchanged: retrying cannot fix them.
_TRANSPORT_FAILURES = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

#: The gate: called with the API class before each HTTP request; it may raise to hold the call
#: back, and may return a callable that the transport calls once the exchange is over.
BeforeCall = Callable[[str], Callable[[], None] | None]
#: Told of every HTTP exchange once it is over: the API class and the answer's status, or
#: ``None`` when no answer came (a timeout, a dropped connection). For counting calls.
OnResponse = Callable[[str, int | None], None]


def _no_gate(api_class: str) -> None:
    """The default gate: let every call through."""


def _no_observer(api_class: str, status: int | None) -> None:
    """The default observer: count nothing."""


class Transport:
    """HTTP access to one endpoint family (BMS v1, or the OpenStack native API).

    :param base_url: scheme, host and optional path prefix; API paths are appended to it.
    :param auth: the ``AuthBase`` applied to every request.
    :param timeout: ``(connect, read)`` seconds, applied to every request.
    :param before_call: gate called with the API class before each HTTP request.
    :param headers: extra default headers of this family (``Connection: close`` for /v2.1).
    :param get_retries: extra attempts for a GET after a connection error or a 5xx.
    :param retry_backoff: seconds before the first GET retry; doubled for each next one.
    :param on_response: told of each exchange's API class and status once it is over.
    """

    def __init__(
        self,
        base_url: str,
        auth: AuthBase,
        *,
        timeout: tuple[float, float],
        before_call: BeforeCall | None = None,
        headers: Mapping[str, str] | None = None,
        get_retries: int = 2,
        retry_backoff: float = 0.2,
        on_response: OnResponse | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.on_response = on_response or _no_observer
        self.timeout = timeout
        self.before_call = before_call or _no_gate
        self.get_retries = get_retries
        self.retry_backoff = retry_backoff
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(
            {
                "Content-Type": auth_module.JSON_CONTENT_TYPE,
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self.session.headers.update(headers or {})
        _read_environment_once(self.session, self.base_url)

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, auth={self.session.auth!r})"

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    def request(
        self,
        api_class: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one API call and return its successful response.

        :param api_class: the quota class the call spends, passed to the gate.
        :param path: the path below the base URL, starting with ``/``, segments already quoted.
        :raises CloudAPIError: the cloud answered with an error status (a subclass per status).
        :raises CloudTimeout: the connect or read timed out.
        :raises CloudConnectionError: the connection failed or dropped.
        """
        method = method.upper()
        attempts = 1 + (self.get_retries if method in SAFE_METHODS else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._send_once(api_class, method, path, params, json, headers)
            except (CloudTransportError, ServerError) as exc:
                if attempt == attempts or not _worth_retrying(exc):
                    raise
                delay = self.retry_backoff * 2 ** (attempt - 1)
                logger.debug("%s %s failed (%s), retry %d in %.2fs", method, path,
                             type(exc).__name__, attempt, delay)  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send_once(
        self,
        api_class: str,
        method: str,
        path: str,
        params: Any,
        json: Any,
        headers: Mapping[str, str] | None,
    ) -> requests.Response:
        url = self.base_url + path
        after_call = self.before_call(api_class)
        # A TokenAuth re-send after a 401 is a second HTTP call: let it pass the same gate.
        gate_token = auth_module.before_resend.set(lambda: self.before_call(api_class))
        started = time.monotonic()
        response = None
        try:
            # No redirects: the cloud APIs do not redirect, and following one would turn a POST
            # into a GET and send the credentials to another host.
            response = self.session.send(
                self._prepare(method, url, params, json, headers),
                timeout=self.timeout,
                allow_redirects=False,
            )
        except _TRANSPORT_FAILURES as exc:
            logger.debug("%s %s -> %s", method, path, type(exc).__name__)
            raise error_from_transport(exc, method, url) from None
        finally:
            auth_module.before_resend.reset(gate_token)
            if after_call is not None:
                after_call()
            self.on_response(api_class, response.status_code if response is not None else None)
        logger.debug(
            "%s %s -> %s request_id=%s %.0fms",
            method,
            urlsplit(response.url).path,
            response.status_code,
            response.headers.get("X-Request-Id"),
            (time.monotonic() - started) * 1000,
        )
        try:
            raise_from_response(response)
        except Throttled as exc:
            exc.api_class = api_class  # the quota that ran out, for the caller's back-off
            raise
        return response

    def _prepare(
        self, method: str, url: str, params: Any, json: Any, headers: Mapping[str, str] | None
    ) -> requests.PreparedRequest:
        """The request as ``Session.request`` would prepare it for this transport's session:
        its default headers under the call's own, signed by its auth. Prepared here because
        ``Session.prepare_request`` merges settings this session never has (cookies, params,
        hooks, per-call auth), a sixth of a cloud call's CPU in a worker (issue 11)."""
        merged = {**self.session.headers, **headers} if headers else self.session.headers
        request = requests.Request(
            method, url, headers=merged, params=params, json=json, auth=self.session.auth
        )
        return request.prepare()


def _read_environment_once(session: requests.Session, base_url: str) -> None:
    """Take the proxies and CA bundle the environment names for ``base_url`` now, and stop
    ``session`` reading the environment on every request: requests scans every environment
    variable for proxy settings per call (``trust_env``), 12% of a worker's CPU per cloud call
    (issue 11). Every request of a transport goes to the same host, so the answer for the base
    URL is the answer for each; the environment is read once per process, like the settings."""
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(found["proxies"])
    session.verify = found["verify"]
    session.trust_env = False


def _worth_retrying(exc: CloudTransportError | ServerError) -> bool:
    """Whether a failed GET is retried: 5xx, connection errors and connect timeouts are; a read
    timeout is not, because another full read timeout would stall the caller for long."""
    if isinstance(exc, ServerError | CloudConnectionError):
        return True
    return not exc.may_have_reached_server


def json_body(response: requests.Response) -> dict:
    """The response's JSON object, or ``{}`` for an empty body (204 and friends).

    :raises UnexpectedResponse: the body is not a JSON object.
    """
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise unexpected(response, "response body is not a JSON object")
    return body


def unexpected(response: requests.Response, what: str) -> UnexpectedResponse:
    """An :class:`UnexpectedResponse` describing ``response`` and what was wrong with it."""
    request = response.request
    return UnexpectedResponse(
        response.status_code,
        "UnexpectedResponse",
        what,
        response.headers.get("X-Request-Id"),
        request.method if request is not None else None,
        response.url,
    )


def require(response: requests.Response, body: dict, key: str) -> Any:
    """``body[key]``, or :class:`UnexpectedResponse` when the documented key is missing."""
    try:
        return body[key]
    except KeyError:
        raise unexpected(response, f"response body has no {key!r}") from None
