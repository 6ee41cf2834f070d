"""The Redis broker transport: kombu's, with one Redis client per channel kept across calls.

kombu's Redis channel builds a new ``redis.Redis`` for every message it publishes, acks or
marks unacked (``Channel.conn_or_acquire``). Building one fills a table of about 150 response
callbacks; with three of those per message it was 4% of a pool child's CPU and more of a worker
main process's (issue 11). The connections themselves already come from the channel's pool, so
a client kept per pool does the same work: same pool, same sockets, no table built per call.

Used for ``redis://`` and ``rediss://`` brokers (:func:`transport_for`); other URLs (Sentinel,
``redis+socket://``) keep kombu's own transport.
"""

from __future__ import annotations

from contextlib import contextmanager
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis

#: Broker URL schemes this transport serves.
SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, keeping the client it publishes and acks through."""

    _kept_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        pool = self.pool  # a new pool after kombu dropped the old one (a lost connection, a fork)
        kept = self._kept_client
        if kept is None or kept.connection_pool is not pool:
            kept = self._kept_client = self._create_client()
        yield kept


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for ``broker_url``: this module's transport for a plain
    Redis URL, ``None`` (the URL's own) for anything else."""
    scheme = urlsplit(broker_url).scheme
    return f"{__name__}:Transport" if scheme in SCHEMES else None
