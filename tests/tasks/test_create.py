"""The create step's body with a scripted cloud: at most one server, whatever interleaves."""

from __future__ import annotations

import contextlib
import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest

from bms.client import CreateResult, ServerPage
from bms.exceptions import BadRequest, CloudConnectionError, Throttled
from models.base import utcnow
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState
from tasks import create as create_module
from tasks.base import MAX_TRANSIENT_ERRORS, StaleChain, Wait, claim
from tasks.control import cancel, retry
from tasks.create import create_server
from tests.tasks.stepkit import next_task

S = RequestState


def listed(*servers: tuple[str, str]) -> ServerPage:
    """A list answer with servers ``(id, marker)``."""
    found = [
        {"id": sid, "status": "BUILD", "metadata": {MARKER_METADATA_KEY: marker}}
        for sid, marker in servers
    ]
    return ServerPage(found, len(found))


def test_a_cancel_during_the_create_post_never_provisions(bench):
    request_id = bench.add(S.PENDING)
    chain = bench.chain(request_id)
    cancels = bench.cancel_during(request_id, CreateResult("job-1"))
    bench.client.on("create_servers", cancels)

    outcome = create_server(chain)

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED
    assert stored.job_id == "job-1"  # known, so that its server is deleted when the job ends
    assert next_task(outcome) == "bms.poll_create_job"
    assert [to for _f, to, _d in bench.events(request_id)] == ["PENDING", "CREATING", "CANCELLED"]


def test_a_create_refused_after_a_cancel_ends_quietly(bench):
    request_id = bench.add(S.PENDING)
    chain = bench.chain(request_id)
    refusal = BadRequest(400, "BMS.0008", "no such flavor")
    bench.client.on("create_servers", bench.cancel_during(request_id, refusal))

    outcome = create_server(chain)  # before: IllegalTransition CANCELLED -> FAILED

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.create_intent_at is None
    assert next_task(outcome) is None


def test_the_server_is_created_under_its_final_name_with_the_marker_in_metadata(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", CreateResult("job-1"))

    create_server(bench.chain(request_id))

    ((body,),) = [args for name, args in bench.client.calls if name == "create_servers"]
    stored = bench.get(request_id)
    assert body["name"] == "web"
    assert body["metadata"][MARKER_METADATA_KEY] == stored.create_marker


def test_a_second_copy_of_a_finished_create_does_nothing(bench):
    request_id = bench.add(S.PENDING)
    message = bench.chain(request_id)
    bench.client.on("create_servers", CreateResult("job-1"))
    create_server(bench.chain(request_id))

    with pytest.raises(StaleChain):
        create_server(message)  # the same message, delivered again

    assert bench.client.count("create_servers") == 1


def test_a_lost_answer_adopts_the_server_and_queues_any_duplicate_for_deletion(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", CloudConnectionError("dropped", "POST", "/x"))
    with pytest.raises(CloudConnectionError):
        create_server(bench.chain(request_id))
    marker = bench.get(request_id).create_marker
    bench.client.on("list_servers", listed(("srv-1", marker), ("srv-2", marker)))

    outcome = create_server(bench.chain(request_id))

    stored = bench.get(request_id)
    assert (stored.state, stored.server_id) == (S.BUILDING, "srv-1")
    assert next_task(outcome) == "bms.wait_server_built"
    assert [s.server_id for s in bench.strays(request_id)] == ["srv-2"]
    assert bench.client.count("create_servers") == 1


def test_a_create_answered_after_the_request_moved_on_is_queued_for_deletion(bench):
    request_id = bench.add(S.PENDING)
    chain = bench.chain(request_id)

    def another_run_adopted_meanwhile() -> None:
        bench.set(request_id, server_id="srv-9", create_intent_at=None, state=S.BUILDING)

    bench.client.on(
        "create_servers", bench.during(another_run_adopted_meanwhile, CreateResult("job-late"))
    )

    assert create_server(chain) is None

    strays = bench.strays(request_id)
    assert [(s.create_job_id, s.server_id) for s in strays] == [("job-late", None)]
    assert any("job-late" in (detail or "") for _f, _t, detail in bench.events(request_id))


def test_markers_never_repeat_across_retries(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", BadRequest(400, "BMS.0008", "no such flavor"))
    create_server(bench.chain(request_id))
    first = bench.get(request_id)
    assert first.state is S.FAILED
    first_marker = first.create_serial

    retry(bench.sessions, [request_id])
    create_server(bench.chain(request_id))

    again = bench.get(request_id)
    assert again.attempt == 1  # the operator's retry is a fresh budget...
    assert again.create_serial == first_marker + 1  # ...but never a marker seen before


def test_a_quota_wait_spends_no_attempt_and_names_no_marker(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", Throttled(429, "APIGW.0308", "quota"))
    with pytest.raises(Throttled):
        create_server(bench.chain(request_id))
    stored = bench.get(request_id)
    assert (stored.attempt, stored.create_marker, stored.create_intent_at) == (0, None, None)


def test_a_cancelled_request_whose_create_was_never_made_finds_nothing_and_stops(bench):
    request_id = bench.add(S.PENDING)
    bench.client.on("create_servers", CloudConnectionError("dropped", "POST", "/x"))
    with pytest.raises(CloudConnectionError):
        create_server(bench.chain(request_id))
    cancel(bench.sessions, [request_id])
    bench.client.on("list_servers", listed())

    outcome = create_server(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.create_intent_at is None
    assert next_task(outcome) is None
    assert bench.client.count("create_servers") == 1  # a cancelled request never creates


def test_a_request_failed_while_its_create_may_be_in_the_cloud_keeps_its_marker(bench):
    # The POST's answer was lost, then the look-up kept failing until the budget ran out: the
    # request FAILS, but the server that POST may have made must still be found by the retry.
    request_id = bench.add(
        S.CREATING, attempt=1, create_serial=1, create_marker="m1", create_intent_at=utcnow()
    )
    bench.client.on("list_servers", CloudConnectionError("dropped", "GET", "/x"))
    fence = bench.get(request_id).fence
    create_server.task(
        request_id=str(request_id), fence=fence, transient_errors=MAX_TRANSIENT_ERRORS
    )
    assert bench.get(request_id).state is S.FAILED

    retry(bench.sessions, [request_id])
    bench.client.on("list_servers", listed(("srv-1", "m1")))
    create_server(bench.chain(request_id))

    stored = bench.get(request_id)
    assert (stored.state, stored.server_id) == (S.BUILDING, "srv-1")  # before: a second POST
    assert bench.client.count("create_servers") == 0


def test_two_copies_that_both_find_no_server_send_one_post(bench, monkeypatch):
    # Two copies of the step (a redelivery) look a lost create up, past the grace, and find
    # nothing. The second decides right after the first: it must see the first's new intent
    # and wait, not POST beside it (a second billed server, deleted later as a stray).
    bench.settings.create_lookup_grace_seconds = 60
    long_ago = utcnow() - timedelta(seconds=120)
    request_id = bench.add(
        S.CREATING, attempt=1, create_serial=1, create_marker="m1", create_intent_at=long_ago
    )
    first, second = bench.chain(request_id), bench.chain(request_id)
    first_decided, second_decided = threading.Event(), threading.Event()
    second_went_on = threading.Event()
    claims = {id(first): 0, id(second): 0}

    @contextmanager
    def counted_claim(chain, **kwargs):
        try:
            with claim(chain, **kwargs) as held:
                yield held
        finally:
            claims[id(chain)] += 1
            if chain is first and claims[id(first)] == 2:  # its look-up decided to create
                first_decided.set()
                second_decided.wait(30)  # the second copy's look-up ends now
            if chain is second and claims[id(second)] == 2:
                second_decided.set()
            if chain is second and claims[id(second)] == 3:  # its intent touched, POST next
                second_went_on.set()

    def first_post(*_args):
        second_went_on.wait(30)  # the second copy has decided (and touched, or waits)
        return CreateResult("job-1")

    def second_copy():
        first_decided.wait(30)
        with contextlib.suppress(Wait, StaleChain):
            create_server(second)
        second_went_on.set()

    monkeypatch.setattr(create_module, "claim", counted_claim)
    bench.client.on("list_servers", listed())
    bench.client.on(
        "create_servers",
        lambda body: first_post() if threading.current_thread() is main else CreateResult("job-2"),
    )
    main = threading.current_thread()
    other = threading.Thread(target=second_copy)
    other.start()
    with contextlib.suppress(Wait, StaleChain):
        create_server(first)
    other.join(30)

    assert bench.client.count("create_servers") == 1  # before: 2
