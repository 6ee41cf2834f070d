"""``GET /healthz``: does the database answer a ``SELECT 1``, does the broker answer a ``PING``.

Open without the token, so that a load balancer or compose can probe it. To such a caller a
dependency that fails is only "down": its error (which can name a host and port) is logged,
and shown, by its class and first line, only to a caller with the configured token.
"""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text

from api.deps import AppSettings, Sessions
from api.edge import token_matches
from api.schemas import Check, Health

log = logging.getLogger("bms.api")
router = APIRouter(tags=["health"])

#: What a caller without the token learns about a dependency that fails.
DOWN = "down"

#: A probe must answer fast even when a dependency hangs.
TIMEOUT_SECONDS = 2.0


def _error(exc: Exception) -> str:
    # SQLAlchemy wraps the driver's error; the driver's first line is the informative part.
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


def check_database(sessions: Sessions) -> Check:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "down"; the body says which
        return Check(ok=False, error=_error(exc))
    return Check(ok=True)


def check_broker(redis_url: str | None) -> Check:
    if not redis_url:
        return Check(ok=False, error="BMS_REDIS_URL is not set")
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except Exception as exc:  # any failure means "down"; the body says which
        return Check(ok=False, error=_error(exc))
    finally:
        client.close()
    return Check(ok=True)


@router.get(
    "/healthz",
    response_model=Health,
    summary="Health of the database and the broker",
    responses={503: {"model": Health, "description": "The database or the broker is down."}},
)
def healthz(
    request: Request, response: Response, settings: AppSettings, sessions: Sessions
) -> Health:
    """200 when the database and the broker (Redis) both answer; 503 otherwise, the body saying
    which did not. Needs no token; why it did not is said only with the token (else "down")."""
    database, broker = check_database(sessions), check_broker(settings.redis_url)
    healthy = database.ok and broker.ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        for name, check in (("database", database), ("broker", broker)):
            if not check.ok:
                log.warning("healthz: %s down: %s", name, check.error)
        if not _with_token(settings, request):
            database, broker = _terse(database), _terse(broker)
    return Health(status="ok" if healthy else "unavailable", database=database, broker=broker)


def _with_token(settings: AppSettings, request: Request) -> bool:
    configured = settings.api_token is not None and settings.api_token.get_secret_value() != ""
    return configured and token_matches(settings, request.headers.get("authorization"))


def _terse(check: Check) -> Check:
    return check if check.ok else Check(ok=False, error=DOWN)
