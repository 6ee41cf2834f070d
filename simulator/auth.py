"""Authentication: IAM tokens (``POST /v3/auth/tokens``) and AK/SK ``SDK-HMAC-SHA256``
signatures, verified by rebuilding the canonical request of reference section 2.2."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, unquote

from simulator.config import SimulatorConfig
from simulator.wire import ApiError, Request, Response

ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_BODY_HASH = hashlib.sha256(b"").hexdigest()
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
#: How far the client's ``X-Sdk-Date`` may be from the simulator's clock.
ALLOWED_SKEW = timedelta(minutes=15)
TOKEN_LIFETIME = timedelta(hours=24)

_AUTHORIZATION = re.compile(
    r"^SDK-HMAC-SHA256\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-fA-F]+)$"
)


class AuthFailure(Exception):
    """The request is not authenticated; the message completes the gateway's ``error_msg``."""


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """Each decoded segment re-encoded, always ending with ``/``."""
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query_string: str) -> str:
    pairs = sorted(parse_qsl(query_string, keep_blank_values=True))
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in pairs)


def canonical_request(
    method: str,
    path: str,
    query_string: str,
    headers: dict[str, str],
    signed_headers: list[str],
    body: bytes,
) -> str:
    """Section 2.2 step 3; ``headers`` are keyed by lower-case name."""
    header_block = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    if not body:
        body_hash = EMPTY_BODY_HASH
    else:
        body_hash = headers.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query_string),
            header_block,
            ";".join(signed_headers),
            body_hash,
        ]
    )


def signature(secret_key: str, sdk_date: str, canonical: str) -> str:
    """Steps 4 and 5: HMAC-SHA256 of the string to sign, keyed by the SK."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def verify_signature(
    request: Request, secret_keys: dict[str, str], now: datetime | None = None
) -> str:
    """Return the AK of a correctly signed request; raise ``AuthFailure`` otherwise.

    ``now`` enables the clock-skew check; None skips it (the test vectors are from 2024).
    """
    match = _AUTHORIZATION.match((request.header("authorization") or "").strip())
    if not match:
        raise AuthFailure("verify aksk signature fail")
    secret_key = secret_keys.get(match["ak"])
    sdk_date = request.header("x-sdk-date") or ""
    signed = match["signed"].lower().split(";")
    if secret_key is None or not sdk_date or "x-sdk-date" not in signed:
        raise AuthFailure("verify aksk signature fail")
    if now is not None:
        try:
            signed_at = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise AuthFailure("verify aksk signature fail") from None
        if abs(now - signed_at) > ALLOWED_SKEW:
            raise AuthFailure("verify aksk signature fail")
    headers = {name: _header_text(value) for name, value in request.headers.items()}
    canonical = canonical_request(
        request.method, request.path, request.query_string, headers, signed, request.body
    )
    expected = signature(secret_key, sdk_date, canonical)
    if not hmac.compare_digest(expected, match["signature"].lower()):
        raise AuthFailure("verify aksk signature fail")
    return match["ak"]


def _header_text(value: str) -> str:
    """Undo http.server's latin-1 decoding: the SDK signed the UTF-8 text."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


class Authenticator:
    """Checks requests against the configured key pairs and the tokens IAM issued."""

    def __init__(self, config: SimulatorConfig, clock) -> None:
        self.config = config
        self.clock = clock
        self.secret_keys = dict(config.credentials)
        self._tokens: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def check(self, request: Request) -> None:
        """Raise ``AuthFailure`` unless the request carries a valid token or signature."""
        if not self.config.auth:
            return
        token = request.header("x-auth-token")
        if token is not None:
            with self._lock:
                expires = self._tokens.get(token)
            if expires is None or expires < self.clock.now():
                raise AuthFailure("decrypt token fail")
            return
        verify_signature(request, self.secret_keys, now=self.clock.now())

    def issue_token(self, request: Request) -> Response:
        """``POST /v3/auth/tokens`` with a password identity: 201 and ``X-Subject-Token``."""
        user = _password_user(request.json())
        known = {(u.name, u.password, u.domain) for u in self.config.users}
        if user not in known:
            raise ApiError(
                401,
                {
                    "error": {
                        "code": 401,
                        "message": "The username or password is wrong.",
                        "title": "Unauthorized",
                    }
                },
            )
        token = "MIIsim" + secrets.token_urlsafe(48)
        issued = self.clock.now()
        with self._lock:
            self._tokens[token] = issued + TOKEN_LIFETIME
        return Response(
            201, _token_body(user, issued, self.config.project_id), {"X-Subject-Token": token}
        )


def _password_user(document: dict) -> tuple[str, str, str]:
    try:
        user = document["auth"]["identity"]["password"]["user"]
        return user["name"], user["password"], user["domain"]["name"]
    except (KeyError, TypeError):
        raise ApiError(
            400,
            {
                "error": {
                    "code": 400,
                    "message": "Invalid auth request body.",
                    "title": "Bad Request",
                }
            },
        ) from None


def _token_body(user: tuple[str, str, str], issued: datetime, project_id: str) -> dict:
    name, _, domain = user
    stamp = "%Y-%m-%dT%H:%M:%S.000000Z"
    return {
        "token": {
            "methods": ["password"],
            "issued_at": issued.strftime(stamp),
            "expires_at": (issued + TOKEN_LIFETIME).strftime(stamp),
            "project": {"id": project_id, "name": "cn-north-4", "domain": {"name": domain}},
            "user": {
                "id": hashlib.md5(name.encode()).hexdigest(),
                "name": name,
                "domain": {"name": domain},
            },
            "roles": [{"name": "te_admin"}],
            "catalog": [],
        }
    }
