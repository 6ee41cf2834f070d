"""The dashboard's login: the API token, typed once, kept as a cookie derived from it.

The browser cannot send ``Authorization: Bearer`` on a page load, so ``/ui/login`` takes the
token and sets a cookie holding HMAC-SHA256(token, "bms-ui-session"), never the token itself.
It is HttpOnly, SameSite=Strict and scoped to the site; changing ``BMS_API_TOKEN`` ends every
session. A request authenticated by the cookie that changes something (POST) must also carry
``X-BMS-CSRF``: a header another site cannot make a browser send.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

COOKIE = "bms_session"
CSRF_HEADER = "X-BMS-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    return _derive(token, "bms-ui-session")


def csrf_value(token: str) -> str:
    return _derive(token, "bms-ui-csrf")


def cookie_ok(request: Request, token: str) -> bool:
    """The request carries the session cookie of ``token`` (and, to change anything, the CSRF
    header)."""
    given = request.cookies.get(COOKIE, "")
    if not given or not hmac.compare_digest(given.encode(), session_value(token).encode()):
        return False
    if request.method in SAFE_METHODS:
        return True
    header = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(header.encode(), csrf_value(token).encode())
