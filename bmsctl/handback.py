"""Handing back the messages a dead worker held, at once rather than hours later.

With the Redis broker, a message a worker has taken but not acknowledged (the step it runs, the
countdowns it holds until they are due) waits in Redis's ``unacked`` hash until the visibility
timeout (4 hours here) delivers it again; until then only the reconciler, after
``BMS_RECONCILE_AFTER_SECONDS`` without progress, rebuilds those chains. A batch whose worker
was killed stood still for ten minutes.

The embedded stack knows more than Redis does: it runs its own Redis and the one worker of each
set of queues, so every unacknowledged message of a dead worker's queues is that worker's. It
hands them back to their queues before the worker is started again (and, at start, those an
earlier run left). Steps are fenced, so a copy still running somewhere does no harm.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from kombu import Connection


def hand_back_unacked(redis_url: str, queues: Collection[str]) -> int:
    """Put every unacknowledged message routed to one of ``queues`` back on its queue;
    returns how many. Only for a Redis whose consumers of ``queues`` are all dead."""
    handed_back = 0
    with Connection(redis_url) as connection:
        channel = connection.default_channel
        client = channel.client
        for tag, payload in client.hgetall(channel.unacked_key).items():
            _message, _exchange, routing_key = json.loads(payload)
            if routing_key in queues:
                channel.qos.restore_by_tag(tag, client)
                handed_back += 1
    return handed_back
