"""``python -m worker.flower [FLOWER OPTIONS]``: Flower for this app, every page behind its auth.

Flower serves ``/metrics`` (every task name, worker and count) and ``/healthcheck`` to anyone,
even with ``FLOWER_BASIC_AUTH`` set. Here both need the same login as the rest when a login is
configured; without one (loopback only, see ``bmsctl up``) they stay open.
"""

from __future__ import annotations

import sys

import tornado.web
from flower.views import monitor


def protect_open_pages() -> None:
    """Wrap the GET of Flower's unauthenticated handlers in Tornado's ``authenticated``."""
    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "bms_protected", False):
            handler.get = tornado.web.authenticated(handler.get)
            handler.get.bms_protected = True


def main(argv: list[str] | None = None) -> None:
    protect_open_pages()
    from celery.bin.celery import main as celery_main

    options = sys.argv[1:] if argv is None else argv
    sys.argv = ["celery", "-A", "worker.app", "flower", *options]
    celery_main()


if __name__ == "__main__":
    main()
