"""The tagging stage's bodies with a scripted cloud: a cancel during any of its calls."""

from __future__ import annotations

import pytest

from models.states import RequestState, Step
from tasks.base import StaleChain
from tasks.finish import apply_tags, finalize, rename_server
from tests.tasks.stepkit import next_task

S = RequestState


def tagging(bench, step_done=None):
    return bench.add(S.TAGGING, server_id="srv-1", step_done=step_done)


def test_a_cancel_during_finalize_deletes_instead_of_activating(bench):
    request_id = tagging(bench, Step.RENAME)
    server = {"id": "srv-1", "status": "ACTIVE", "addresses": {}}
    bench.client.on("show_server", bench.cancel_during(request_id, server))

    outcome = finalize(bench.chain(request_id))  # before: IllegalTransition CANCELLED -> ACTIVE

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED
    assert next_task(outcome) == "bms.delete_server"


def test_a_cancel_during_tagging_goes_to_cleanup_not_to_rename(bench):
    request_id = tagging(bench)
    bench.client.on("replace_tags", bench.cancel_during(request_id, None))

    outcome = apply_tags(bench.chain(request_id))

    assert next_task(outcome) == "bms.delete_server"
    assert bench.get(request_id).step_done is None


def test_the_stage_runs_in_order_and_ends_active_with_no_rename_call(bench):
    request_id = bench.add(S.TAGGING, server_id="srv-1", create_serial=1)
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", {"id": "srv-1", "status": "ACTIVE", "addresses": {"n": []}})

    assert next_task(apply_tags(bench.chain(request_id))) == "bms.rename_server"
    assert next_task(rename_server(bench.chain(request_id))) == "bms.finalize"
    assert next_task(finalize(bench.chain(request_id))) is None

    stored = bench.get(request_id)
    assert stored.state is S.ACTIVE and stored.addresses == {"n": []}
    tags_sent = bench.client.calls[0][1][1]
    assert tags_sent == ["t1", "__type_baremetal"]
    assert bench.client.count("rename_server") == 0  # created under its final name


def test_a_server_created_by_the_earlier_release_is_still_renamed(bench):
    request_id = bench.add(S.TAGGING, server_id="srv-1", step_done=Step.TAG, create_serial=0)
    bench.client.on("rename_server", {})

    rename_server(bench.chain(request_id))

    assert bench.client.calls == [("rename_server", ("srv-1", "web"))]


def test_a_tag_step_delivered_twice_tags_once(bench):
    request_id = tagging(bench)
    message = bench.chain(request_id)
    bench.client.on("replace_tags", None)
    apply_tags(bench.chain(request_id))

    with pytest.raises(StaleChain):
        apply_tags(message)
    assert bench.client.count("replace_tags") == 1
