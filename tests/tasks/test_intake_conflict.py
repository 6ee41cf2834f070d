"""``bms.submit_batch`` (the broker's door): an idempotency key reused with another body."""

from __future__ import annotations

from tasks.intake import submit_batch
from tests.factories import batch, server


def test_the_same_key_with_another_body_is_refused_naming_both_digests(stub_cloud, redis_url):
    first = submit_batch.run(batch(server(name="a")), "order-42")
    replay = submit_batch.run(batch(server(name="a")), "order-42")

    other = submit_batch.run(batch(server(name="b")), "order-42")

    assert first["created"] and not replay["created"]
    assert replay["batch_id"] == first["batch_id"]
    [[field, message]] = other["errors"]
    assert field == "idempotency_key"
    assert first["batch_id"] in message and "another body" in message
