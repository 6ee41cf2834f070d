"""Handing back a dead worker's messages: a real Redis, real kombu consumers, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

from kombu import Connection, Exchange, Queue, producers

from bmsctl.handback import hand_back_unacked

CONSUMER = textwrap.dedent(
    """
    import sys, time
    from kombu import Connection, Queue
    url, queue = sys.argv[1], sys.argv[2]
    with Connection(url) as connection:
        taken = []
        def on_message(body, message):
            taken.append(message)  # never acknowledged: held, like a countdown
            print(body, flush=True)
        with connection.Consumer(Queue(queue, routing_key=queue), callbacks=[on_message],
                                 prefetch_count=10):
            while True:
                connection.drain_events()
    """
)


def publish(url: str, queue: str, body: str) -> None:
    with Connection(url) as connection, producers[connection].acquire(block=True) as producer:
        producer.publish(
            body,
            exchange=Exchange(queue, type="direct"),
            routing_key=queue,
            declare=[Queue(queue, exchange=Exchange(queue, type="direct"), routing_key=queue)],
        )


def queue_length(url: str, queue: str) -> int:
    with Connection(url) as connection:
        return connection.default_channel.client.llen(queue)


def killed_while_holding(url: str, queue: str, bodies: list[str]) -> None:
    """A consumer takes ``bodies`` without acknowledging them, then is killed (SIGKILL)."""
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url, queue], stdout=subprocess.PIPE, text=True
    )
    try:
        for body in bodies:
            publish(url, queue, body)
        seen = [consumer.stdout.readline().strip() for _ in bodies]
        assert sorted(seen) == sorted(bodies)
    finally:
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(10)


def test_a_dead_consumers_messages_go_back_to_their_queue_and_no_others(redis_url):
    # Queue names of this test's own: the session's Redis is shared with other tests.
    job, show, webhook = (f"handback-{uuid.uuid4().hex[:8]}.{n}" for n in ("job", "show", "hook"))
    killed_while_holding(redis_url, job, ["poll-1", "poll-2"])
    killed_while_holding(redis_url, webhook, ["hook-1"])
    assert queue_length(redis_url, job) == 0  # held by the dead: invisible for hours

    handed_back = hand_back_unacked(redis_url, {job, show})

    assert handed_back == 2
    assert queue_length(redis_url, job) == 2
    assert queue_length(redis_url, webhook) == 0  # another worker's: left alone
    assert hand_back_unacked(redis_url, {job}) == 0  # nothing twice
    hand_back_unacked(redis_url, {webhook})  # leave the shared Redis as it was:
    with Connection(redis_url) as connection:
        connection.default_channel.client.delete(job, webhook)
