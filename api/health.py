"""``GET /healthz``: does the database answer a ``SELECT 1``, does the broker answer a ``PING``.

Open without the token, so that a load balancer or compose can probe it. An error is reported
by its class and first line only: enough to tell which dependency is down, no connection string.
"""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.deps import AppSettings, Sessions
from api.schemas import Check, Health

router = APIRouter(tags=["health"])

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
def healthz(response: Response, settings: AppSettings, sessions: Sessions) -> Health:
    """200 when the database and the broker (Redis) both answer; 503 otherwise, the body saying
    which did not and why. Needs no token."""
    database, broker = check_database(sessions), check_broker(settings.redis_url)
    healthy = database.ok and broker.ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if healthy else "unavailable", database=database, broker=broker)
