"""The API's edge: the token, then the body's size, checked before any of the body is read.

A pure ASGI middleware, so that nothing (FastAPI's body parsing included) runs before it: an
unauthenticated request is refused (401) and a body over ``BMS_API_MAX_BODY_BYTES`` is refused
(413) by its ``Content-Length`` alone, without reading it; a body sent in chunks is counted as
it streams and refused as soon as it passes the limit. Both answers close the connection, so
the rest of an unread body is not taken in either.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.session import cookie_ok
from worker.settings import Settings

UNAUTHORIZED = "missing or invalid bearer token"


def token_matches(settings: Settings, authorization: str | None) -> bool:
    """Does an ``Authorization`` header carry the configured token (no token: always)?"""
    expected = settings.api_token.get_secret_value() if settings.api_token else ""
    if not expected:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def too_large(limit: int) -> str:
    return f"request body larger than {limit:,} bytes (BMS_API_MAX_BODY_BYTES)"


class BodyTooLarge(HTTPException):
    """Raised by the counting ``receive`` once a streamed body passes the limit.

    An ``HTTPException``, so that FastAPI's body reading passes it on as it is (it turns any
    other exception into a 400) and its handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit), headers={"Connection": "close"})


class Edge:
    """Refuse early: 401 on a protected path without the token, 413 on a body too large."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        open_paths: Collection[str],
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes
        self.limit = settings.api_max_body_bytes

    def _authorized(self, scope: Scope, headers: Headers) -> bool:
        path = scope["path"]
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return True
        authorization = headers.get("authorization")
        if token_matches(self.settings, authorization):
            return True
        # The dashboard's session cookie stands for the token when no bearer header is sent.
        token = self.settings.api_token.get_secret_value() if self.settings.api_token else ""
        return authorization is None and cookie_ok(Request(scope), token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self._authorized(scope, headers):
            await _refuse(scope, receive, send, 401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
            return
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await _refuse(scope, receive, send, 400, "Content-Length is not a number")
            return
        if length is not None and int(length) > self.limit:
            await _refuse(scope, receive, send, 413, too_large(self.limit))
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(scope, receive, send, 413, too_large(self.limit))


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    # Connection: close, since the body (or its rest) is left unread.
    response = JSONResponse(
        {"detail": detail}, status_code=status, headers={**(headers or {}), "Connection": "close"}
    )
    await response(scope, receive, send)
