"""The broker transport keeps one Redis client per channel, against a real Redis."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from worker import broker
from worker.app import make_celery
from worker.settings import Settings


@pytest.fixture
def made_clients(monkeypatch) -> list:
    """Every synchronous Redis client a channel of this transport builds."""
    made = []
    original = broker.Channel._create_client

    def counting(channel, asynchronous=False):
        client = original(channel, asynchronous=asynchronous)
        if not asynchronous:
            made.append(client)
        return client

    monkeypatch.setattr(broker.Channel, "_create_client", counting)
    return made


def test_messages_are_published_and_acked_through_one_client(redis_url, made_clients):
    queue = f"test.broker.{uuid.uuid4().hex}"
    with (
        Connection(redis_url, transport=broker.Transport) as connection,
        connection.SimpleQueue(queue) as simple,
    ):
        for number in range(5):
            simple.put({"number": number})
        received = []
        for _ in range(5):
            message = simple.get(timeout=5)
            received.append(message.payload["number"])
            message.ack()

    assert received == [0, 1, 2, 3, 4]
    # kombu's own channel builds a client for every publish, every unacked mark and every ack.
    assert len(made_clients) == 1


def test_a_channel_whose_pools_were_dropped_takes_a_client_of_the_new_pool(redis_url, made_clients):
    queue = f"test.broker.{uuid.uuid4().hex}"
    with (
        Connection(redis_url, transport=broker.Transport) as connection,
        connection.SimpleQueue(queue) as simple,
    ):
        simple.put({"before": True})
        # What kombu does after a lost connection or a fork: the old pool is disconnected.
        simple.channel._disconnect_pools()
        simple.put({"after": True})
        payloads = [simple.get(timeout=5).payload for _ in range(2)]

    assert payloads == [{"before": True}, {"after": True}]
    # A client per pool the channel had (kombu may drop the new pool again when it meets the
    # connections closed under it), never the old pool's client for the new pool.
    pools = [client.connection_pool for client in made_clients]
    assert len(pools) >= 2
    assert len({id(pool) for pool in pools}) == len(pools)


def test_the_app_uses_it_for_redis_urls_only():
    redis_app = make_celery(Settings(redis_url="redis://127.0.0.1:1/0"))
    sentinel_app = make_celery(Settings(redis_url="sentinel://127.0.0.1:26379/0"))

    assert redis_app.connection_for_write().transport_cls == "worker.broker:Transport"
    assert broker.transport_for("rediss://cache.example:6380/0") == "worker.broker:Transport"
    assert sentinel_app.conf.broker_transport is None
