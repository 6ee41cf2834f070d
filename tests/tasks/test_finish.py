"""The tagging stage's bodies with a scripted cloud: a cancel during any of its calls."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select

from models.db import session_scope
from models.states import RequestState, Step
from models.webhooks import WebhookDelivery, WebhookTarget
from tasks.base import StaleChain
from tasks.finish import Stage, apply_tags, finalize, finish_stage, rename_server
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


@pytest.fixture
def statements(database):
    """The SQL statements sent while the test runs, as their first words."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(" ".join(statement.split()[:3]))

    event.listen(database.engine, "before_cursor_execute", record)
    yield seen
    event.remove(database.engine, "before_cursor_execute", record)


def test_finalize_of_a_batch_known_without_webhook_loads_no_row(bench, statements):
    # The usual end (issue 11): one conditional UPDATE and the event; the outbox is told the
    # batch, known by then to want no webhook, instead of loading the request to learn it.
    first, second = tagging(bench), tagging(bench)
    bench.set(second, batch_id=bench.get(first).batch_id)
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", {"id": "srv-1", "status": "ACTIVE", "addresses": {"n": []}})
    stage = Stage("srv-1", {"tags": ["t1"]}, "web", marker_name=False)
    assert next_task(finish_stage(bench.chain(first), stage)) is None  # learns: no webhook
    chain = bench.chain(second)
    statements.clear()

    assert next_task(finish_stage(chain, stage)) is None

    written = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert written == ["UPDATE server_requests SET", "INSERT INTO events"]
    stored = bench.get(second)
    assert (stored.state, stored.step_done, stored.addresses) == (
        S.ACTIVE,
        Step.FINALIZE,
        {"n": []},
    )


def test_finalize_without_loading_the_row_still_adds_the_webhook_delivery(bench):
    request_id = tagging(bench, Step.RENAME)
    with session_scope(bench.sessions) as session:
        batch_id = bench.get(request_id).batch_id
        session.add(WebhookTarget(batch_id=batch_id, url="https://hooks.example.com/bms",
                                  request_events=True))  # fmt: skip
    bench.client.on("show_server", {"id": "srv-1", "status": "ACTIVE", "addresses": {}})

    finalize(bench.chain(request_id))

    with session_scope(bench.sessions) as session:
        delivery = session.scalar(select(WebhookDelivery))
        assert (delivery.request_id, delivery.payload["request"]["state"]) == (request_id, "ACTIVE")
