"""The preflight with real workers: a batch the cloud cannot hold is FAILED whole, before any
create; one it can hold is provisioned."""

from __future__ import annotations

import pytest

from models.states import RequestState
from tasks.preflight import PREFLIGHT_CODE
from tests.factories import batch, server

pytestmark = pytest.mark.e2e


def test_a_refused_batch_fails_whole_and_nothing_is_created(stack_factory):
    stack = stack_factory()
    stack.simulator.control.set_limits(maxTotalInstances=3)
    stack.start_worker("all", concurrency=2)

    submitted = stack.submit(
        batch(server(name="web", count=3), server(name="db", flavorRef="physical.nope"))
    )
    requests = stack.wait_until_finished(submitted.batch_id, timeout=60)

    assert [r.state for r in requests] == [RequestState.FAILED] * 4
    assert {r.last_error_code for r in requests} == {PREFLIGHT_CODE}
    assert "limits.maxTotalInstances: the batch needs 4 servers" in requests[0].last_error_message
    assert "flavorRef: flavor physical.nope does not exist" in requests[3].last_error_message
    assert stack.simulator.control.servers() == []
    assert stack.simulator.control.counters()["create"]["calls"] == 0


def test_a_batch_that_passes_is_provisioned(stack_factory):
    stack = stack_factory()
    stack.simulator.control.set_limits(maxTotalInstances=3)
    stack.start_worker("all", concurrency=2)

    submitted = stack.submit(batch(server(name="web", count=3)))
    requests = stack.wait_until_finished(submitted.batch_id, timeout=90)

    assert [r.state for r in requests] == [RequestState.ACTIVE] * 3
    assert len(stack.simulator.control.servers()) == 3
