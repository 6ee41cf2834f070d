"""Bearer-token auth: when ``BMS_API_TOKEN`` is set, every protected route needs it.

The dashboard's session cookie (``api/session.py``) is accepted as well: it is derived from the
same token, so the API and the dashboard have one credential. The check that counts runs at the
edge (``api.edge``), before the body is read; this dependency repeats it for the routes, so that
the OpenAPI page shows the bearer scheme.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import AppSettings
from api.session import cookie_ok

# auto_error=False: a missing header gets our 401 (FastAPI's own would be a 403), and only when
# a token is configured at all.
bearer = HTTPBearer(auto_error=False, description="The value of BMS_API_TOKEN.")


def require_token(
    request: Request,
    settings: AppSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Refuse the call (401) unless it carries the configured token; no token: open API."""
    expected = settings.api_token.get_secret_value() if settings.api_token else ""
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()) and not (
        credentials is None and cookie_ok(request, expected)
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
