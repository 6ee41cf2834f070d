"""``serve(settings)``: run the API under uvicorn, refusing an unsafe configuration first.

Off loopback, the API refuses to start without ``BMS_API_TOKEN``: anyone who reaches the port
could otherwise create billed servers.
"""

from __future__ import annotations

import ipaddress

import uvicorn

from worker.settings import Settings


class ServeRefused(RuntimeError):
    """The settings would make the API unsafe or unusable; the message names the variable."""


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; any other name may resolve off the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serve(settings: Settings) -> None:
    """:raises ServeRefused: bound off loopback without a token, or no broker configured."""
    has_token = settings.api_token is not None and settings.api_token.get_secret_value() != ""
    if not is_loopback(settings.api_host) and not has_token:
        raise ServeRefused(
            f"refusing to serve on {settings.api_host}:{settings.api_port} without a token: "
            "set BMS_API_TOKEN, or bind BMS_API_HOST to 127.0.0.1"
        )
    if not settings.redis_url:
        raise ServeRefused("BMS_REDIS_URL is not set: the API sends requests to workers there")


def serve(settings: Settings) -> None:
    """Run the API in the foreground until interrupted.

    :raises ServeRefused: see :func:`check_serve`; nothing is started then.
    """
    check_serve(settings)
    # Imported after the check: the routes import the Celery app, which needs the broker URL.
    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        # Behind a proxy the client address comes from it; never trusted by default.
        proxy_headers=False,
    )
