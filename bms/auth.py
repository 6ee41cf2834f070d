"""Authentication for the cloud APIs, as ``requests.auth.AuthBase`` objects.

* :class:`AkSkAuth` signs each request with the ``SDK-HMAC-SHA256`` scheme of the reference
  (section 2.2), the scheme of ``huaweicloudsdkcore``'s ``Signer``. The signing steps are plain
  functions (:func:`canonical_request`, :func:`sign`) so they can be checked against the
  published test vectors.
* :class:`TokenAuth` obtains a project-scoped IAM token (``POST /v3/auth/tokens``, section 2.1),
  caches it until shortly before it expires, and on a 401 fetches a fresh one and re-sends the
  request once.

Neither object shows its secret key, password or token in ``repr``/``str``, a log line or an
exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import requests
from requests.auth import AuthBase

from bms.exceptions import AuthenticationError, error_from_transport, raise_from_response

logger = logging.getLogger("bms.auth")

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"

#: A callable the caller may set (per thread / task) to be run before :class:`TokenAuth`
#: re-sends a request after a 401, so that a rate gate also counts that second call.
#: :class:`bms.client.BmsClient` sets it around each request to its ``before_call`` hook.
before_resend: ContextVar[Callable[[], Callable[[], None] | None] | None] = ContextVar(
    "bms_before_resend", default=None
)


# --- SDK-HMAC-SHA256 signing steps (section 2.2) ---------------------------------------------


def canonical_uri(path: str) -> str:
    """Path URL-decoded, each segment re-encoded with only ``~`` kept, always ending in ``/``."""
    encoded = "/".join(quote(segment, safe="~") for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded ``(key, value)`` pairs sorted by key then value, encoded, ``&``-joined."""
    return "&".join(
        f"{quote(key, safe='~')}={quote(value, safe='~')}" for key, value in sorted(pairs)
    )


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased, sorted names of the headers to sign (names with ``_`` are never signed)."""
    return sorted({name.lower() for name in headers if "_" not in name})


def canonical_request(
    method: str,
    path: str,
    query_pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes | None,
) -> tuple[str, list[str]]:
    """The canonical request text and the signed header names, for every header in ``headers``.

    ``headers`` must already hold ``Host`` and ``X-Sdk-Date``; a body is hashed unless the
    ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` header says otherwise.
    """
    names = signed_header_names(headers)
    values = {name.lower(): str(value).strip() for name, value in headers.items()}
    header_block = "".join(f"{name}:{values[name]}\n" for name in names)
    if not body:
        payload_hash = EMPTY_BODY_SHA256
    else:
        payload_hash = values.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()
    text = "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query_pairs),
            header_block,
            ";".join(names),
            payload_hash,
        ]
    )
    return text, names


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """``SDK-HMAC-SHA256\\n{X-Sdk-Date}\\n{hex sha256 of the canonical request}``."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def sign(
    method: str,
    path: str,
    query_pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes | None,
    ak: str,
    sk: str,
) -> str:
    """The ``Authorization`` header value for a request whose ``headers`` are all to be signed.

    ``headers`` must hold ``X-Sdk-Date``; the date signed is taken from there.
    """
    canonical, names = canonical_request(method, path, query_pairs, headers, body)
    sdk_date = next(str(v).strip() for k, v in headers.items() if k.lower() == "x-sdk-date")
    signature = hmac.new(
        sk.encode("utf-8"), string_to_sign(canonical, sdk_date).encode("utf-8"), hashlib.sha256
    ).hexdigest()
    return f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(names)}, Signature={signature}"


def _mask(value: str) -> str:
    """The first four characters and an ellipsis: enough to tell two keys apart in a log."""
    return value[:4] + "..." if value else ""


def _is_signed_header(name: str) -> bool:
    # The same set the SDK signs (content-type, host, x-project-id, x-sdk-date,
    # x-security-token) plus any other X- header we set ourselves (X-Auth-Token,
    # X-OpenStack-Nova-API-Version). Transport headers (User-Agent, Accept-Encoding, Connection,
    # Content-Length) are left out: proxies and the HTTP stack may rewrite them.
    lowered = name.lower()
    return "_" not in lowered and (lowered in ("host", "content-type") or lowered.startswith("x-"))


class AkSkAuth(AuthBase):
    """Signs requests with an access key / secret key pair (``SDK-HMAC-SHA256``).

    Adds ``X-Sdk-Date`` (now, UTC), ``Host``, ``X-Project-Id`` (when a project id is given) and
    ``Authorization``. The query string is rewritten in its canonical order and encoding so that
    what goes on the wire is exactly what was signed.

    :param ak: the access key id.
    :param sk: the secret access key (never shown by ``repr``).
    :param project_id: sent as ``X-Project-Id``, as the SDK does for project-scoped services.
    :param clock: returns the current UTC time; for tests.
    """

    def __init__(
        self,
        ak: str,
        sk: str,
        project_id: str | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not ak or not sk:
            raise ValueError("AkSkAuth needs both an access key and a secret key")
        self.ak = ak
        self._sk = sk
        self.project_id = project_id
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"AkSkAuth(ak={_mask(self.ak)!r}, project_id={self.project_id!r})"

    __str__ = __repr__

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(request.url)
        query_pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = canonical_query(query_pairs)
        request.url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

        # Host is set explicitly so the value on the wire is the one signed (urllib3 then
        # skips its own Host header).
        request.headers["Host"] = parts.netloc.rpartition("@")[2]
        request.headers["X-Sdk-Date"] = self._clock().strftime(SDK_DATE_FORMAT)
        if self.project_id:
            request.headers["X-Project-Id"] = self.project_id
        content_type = request.headers.get("Content-Type", "")
        if content_type and not content_type.startswith(("application/json", "application/bson")):
            request.headers["X-Sdk-Content-Sha256"] = UNSIGNED_PAYLOAD

        body = request.body.encode("utf-8") if isinstance(request.body, str) else request.body
        to_sign = {k: v for k, v in request.headers.items() if _is_signed_header(k)}
        request.headers["Authorization"] = sign(
            request.method, parts.path or "/", query_pairs, to_sign, body, self.ak, self._sk
        )
        return request


# --- IAM token ---------------------------------------------------------------------------------

_PROJECT_ID = re.compile(r"[0-9a-f]{32}")

#: Assumed lifetime when IAM's answer has no usable ``expires_at`` (IAM tokens live 24 h).
_FALLBACK_LIFETIME = 3600.0
#: Refresh this long before expiry at most (less for short-lived tokens, see ``_refresh_margin``).
_MAX_REFRESH_MARGIN = 300.0


class TokenAuth(AuthBase):
    """Authenticates with a project-scoped IAM token sent as ``X-Auth-Token``.

    The token is fetched on first use with ``POST {iam_endpoint}/v3/auth/tokens`` (password
    method), cached until shortly before its ``expires_at``, and shared by every request using
    this object (thread-safe). When a request is answered 401, the token is dropped, a fresh one
    fetched, and the request re-sent once; a 401 refused by IAM itself raises
    :class:`~bms.exceptions.AuthenticationError`.

    :param iam_endpoint: IAM base URL, e.g. ``https://iam.myhuaweicloud.com``.
    :param user: IAM user name.
    :param password: the user's password (never shown by ``repr``).
    :param domain: the account (domain) name.
    :param project_name_or_id: the project to scope the token to: a 32-hex project id or a
        project name such as ``cn-north-4``.
    :param session: the ``requests.Session`` for IAM calls (one per endpoint family); a new one
        when omitted.
    :param timeout: ``(connect, read)`` timeout of the IAM call, seconds.
    """

    def __init__(
        self,
        iam_endpoint: str,
        user: str,
        password: str,
        domain: str,
        project_name_or_id: str,
        session: requests.Session | None = None,
        *,
        timeout: tuple[float, float] = (3.05, 30.0),
    ) -> None:
        self.iam_endpoint = iam_endpoint.rstrip("/")
        self.user = user
        self._password = password
        self.domain = domain
        self.project = project_name_or_id
        self.session = session or requests.Session()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # time.monotonic() after which the cached token is not used

    def __repr__(self) -> str:
        return (
            f"TokenAuth(iam_endpoint={self.iam_endpoint!r}, user={self.user!r}, "
            f"domain={self.domain!r}, project={self.project!r})"
        )

    __str__ = __repr__

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["X-Auth-Token"] = self.token()
        request.register_hook("response", self._retry_once_on_401)
        return request

    def token(self) -> str:
        """The cached token, or a fresh one when none is cached or it is about to expire.

        :raises AuthenticationError: IAM refused the credentials.
        :raises CloudAPIError: any other error answer from IAM.
        :raises CloudTransportError: IAM could not be reached.
        """
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token, self._refresh_at = self._fetch_token()
            return self._token

    def invalidate(self, stale_token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``stale_token``, when given)."""
        with self._lock:
            if stale_token is None or stale_token == self._token:
                self._token = None

    def _scope(self) -> dict:
        key = "id" if _PROJECT_ID.fullmatch(self.project) else "name"
        return {"project": {key: self.project}}

    def _fetch_token(self) -> tuple[str, float]:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self._password,
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": self._scope(),
            }
        }
        url = f"{self.iam_endpoint}/v3/auth/tokens"
        started = time.monotonic()
        try:
            response = self.session.post(
                url,
                json=body,
                headers={"Content-Type": JSON_CONTENT_TYPE},
                timeout=self.timeout,
                allow_redirects=False,  # never carry the password to another host
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise error_from_transport(exc, "POST", url) from None
        logger.debug(
            "POST /v3/auth/tokens -> %s request_id=%s",
            response.status_code,
            response.headers.get("X-Request-Id"),
        )
        raise_from_response(response)
        token = response.headers.get("X-Subject-Token")
        if not token:
            raise AuthenticationError(
                response.status_code, "NoSubjectToken", "IAM answered without X-Subject-Token",
                response.headers.get("X-Request-Id"), "POST", url,
            )  # fmt: skip
        lifetime = _token_lifetime(response)
        return token, started + lifetime - _refresh_margin(lifetime)

    def _retry_once_on_401(self, response: requests.Response, **send_kwargs) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, "_bms_token_retried", False):
            return response
        self.invalidate(request.headers.get("X-Auth-Token"))
        fresh = request.copy()
        fresh.headers["X-Auth-Token"] = self.token()
        fresh._bms_token_retried = True  # copy() keeps this hook: stop after one re-send
        # Release the first connection before re-sending, as requests' digest auth does.
        response.content  # noqa: B018
        response.close()
        gate = before_resend.get()
        # The gate may answer with a callback for when the re-sent call is answered (the
        # limiter re-stamps the call then); dropping it would leave the slot stamped early.
        answered = gate() if gate is not None else None
        logger.debug("%s %s -> 401, re-sending once with a fresh token", request.method,
                     urlsplit(request.url).path)  # fmt: skip
        try:
            retried = response.connection.send(fresh, **send_kwargs)
        finally:
            if answered is not None:
                answered()
        retried.history.append(response)
        retried.request = fresh
        return retried


def _token_lifetime(response: requests.Response) -> float:
    """Seconds the token in ``response`` stays valid, from the body's ``token.expires_at``."""
    try:
        expires_at = response.json()["token"]["expires_at"]
        expires = datetime.fromisoformat(expires_at)
    except (ValueError, KeyError, TypeError):
        return _FALLBACK_LIFETIME
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return max(0.0, (expires - datetime.now(UTC)).total_seconds())


def _refresh_margin(lifetime: float) -> float:
    """How long before expiry to refresh: 5 minutes, or a tenth of a short token's lifetime."""
    return min(_MAX_REFRESH_MARGIN, lifetime / 10)
