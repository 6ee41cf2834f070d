"""The stray sweeper with a scripted cloud: a late create's servers found, deleted, noted."""

from __future__ import annotations

from datetime import timedelta

from bms.exceptions import CloudConnectionError
from models.base import utcnow
from models.db import session_scope
from models.records import JobKind, StrayServer, StrayState
from models.states import RequestState
from tasks.base import MAX_TRANSIENT_ERRORS as MAX_ERRORS
from tasks.create import create_server
from tasks.strays import MAX_STRAY_ATTEMPTS, sweep_strays
from tasks.timing import DEADLINES
from tests.tasks.stepkit import job
from tests.tasks.test_create import listed

S = RequestState


def queue_stray(bench, **ids) -> object:
    request_id = bench.add(S.ACTIVE, server_id="srv-kept")
    with session_scope(bench.sessions) as session:
        session.add(StrayServer(request_id=request_id, reason="create answered late", **ids))
    return request_id


def test_a_late_creates_servers_are_found_deleted_and_noted(bench):
    request_id = queue_stray(bench, create_job_id="job-late")
    bench.client.on("show_job", job("SUCCESS", "srv-a", "srv-b", job_id="job-late"))
    sweep_strays()  # reads the job: two servers
    bench.client.on("delete_servers", "del-1")
    sweep_strays()  # deletes both
    bench.client.on("show_job", job("SUCCESS", job_id="del-1"))
    sweep_strays()  # reads the delete jobs

    strays = bench.strays(request_id)
    assert sorted(s.server_id for s in strays) == ["srv-a", "srv-b"]
    assert {s.state for s in strays} == {StrayState.DELETED}
    deleted = [args[0] for name, args in bench.client.calls if name == "delete_servers"]
    assert sorted(deleted) == [["srv-a"], ["srv-b"]]
    notes = [detail for _f, _t, detail in bench.events(request_id)]
    assert any("srv-a" in (n or "") and "deleted" in n for n in notes)


def test_a_stray_that_cannot_be_deleted_is_abandoned_with_its_server_named(bench):
    request_id = queue_stray(bench, server_id="srv-stuck")
    bench.client.on("delete_servers", "del-x")
    bench.client.on("show_job", job("FAIL", code="BMS.9999", job_id="del-x"))
    for _sweep in range(2 * MAX_STRAY_ATTEMPTS + 2):
        sweep_strays()

    (stray,) = bench.strays(request_id)
    assert stray.state is StrayState.ABANDONED
    assert bench.client.count("delete_servers") == MAX_STRAY_ATTEMPTS
    notes = [detail or "" for _f, _t, detail in bench.events(request_id)]
    assert any("srv-stuck" in n and "by hand" in n for n in notes)


def test_a_stray_whose_answer_is_unreadable_does_not_stop_the_sweep(bench):
    request_id = queue_stray(bench, create_job_id="job-odd")
    with session_scope(bench.sessions) as session:
        session.add(StrayServer(request_id=request_id, server_id="srv-b", reason="second match"))
    odd = ValueError("a body nobody expected")
    bench.client.on("show_job", lambda job_id: odd if job_id == "job-odd" else job("RUNNING"))
    bench.client.on("delete_servers", "del-b")

    for _sweep in range(MAX_STRAY_ATTEMPTS):
        sweep_strays()  # before: ValueError, every sweep, and srv-b was never deleted

    strays = {s.create_job_id or s.server_id: s for s in bench.strays(request_id)}
    assert bench.client.count("delete_servers") == 1
    assert strays["srv-b"].state is StrayState.DELETING
    assert strays["job-odd"].state is StrayState.ABANDONED


def test_a_stray_whose_delete_job_never_ends_is_deleted_again_then_abandoned(bench):
    request_id = queue_stray(bench, server_id="srv-slow")
    bench.client.on("delete_servers", "del-slow")
    bench.client.on("show_job", job("RUNNING", job_id="del-slow"))
    for _sweep in range(2 * MAX_STRAY_ATTEMPTS + 2):
        sweep_strays()
        with session_scope(bench.sessions) as session:  # each sweep, the deadline passes
            for stray in session.query(StrayServer):
                stray.updated_at -= timedelta(seconds=DEADLINES[JobKind.DELETE] + 1)

    (stray,) = bench.strays(request_id)
    assert stray.state is StrayState.ABANDONED  # before: DELETING for ever
    notes = [detail or "" for _f, _t, detail in bench.events(request_id)]
    assert any("srv-slow" in n and "by hand" in n for n in notes)


def give_up_a_cancelled_create_whose_answer_was_lost(bench) -> object:
    """A cancelled request whose create POST was dropped, then whose look-ups kept failing past
    the wrapper's budget: the create step is given up with its marker unresolved."""
    request_id = bench.add(S.CANCELLED, create_marker="o1a1", attempt=1, create_intent_at=utcnow())
    bench.client.on("list_servers", CloudConnectionError("dropped", "GET", "/servers"))
    fence = bench.get(request_id).fence
    create_server.task(request_id=str(request_id), fence=fence, transient_errors=MAX_ERRORS)
    return request_id


def test_a_cancelled_create_given_up_unresolved_is_found_by_its_marker_and_deleted(bench):
    request_id = give_up_a_cancelled_create_whose_answer_was_lost(bench)
    assert bench.get(request_id).create_intent_at is None  # the step is done with it...
    (stray,) = bench.strays(request_id)  # ...and the sweeper takes it over: before, nobody did
    assert (stray.marker, stray.state) == ("o1a1", StrayState.PENDING)

    bench.client.on("list_servers", listed(("srv-made", "o1a1"), ("srv-other", "o2a1")))
    sweep_strays()  # lists the request's name: the server with the marker is the stray's
    bench.client.on("delete_servers", "del-1")
    sweep_strays()
    bench.client.on("show_job", job("SUCCESS", job_id="del-1"))
    sweep_strays()

    (stray,) = bench.strays(request_id)
    assert (stray.server_id, stray.state) == ("srv-made", StrayState.DELETED)
    assert [args[0] for name, args in bench.client.calls if name == "delete_servers"] == [
        ["srv-made"]
    ]


def test_a_marker_listed_nowhere_is_closed_only_after_the_lookup_grace(bench):
    request_id = give_up_a_cancelled_create_whose_answer_was_lost(bench)
    bench.settings.create_lookup_grace_seconds = 60
    bench.client.on("list_servers", listed())
    sweep_strays()  # nothing listed yet: a server shows a little after its create
    (stray,) = bench.strays(request_id)
    assert stray.state is StrayState.PENDING

    with session_scope(bench.sessions) as session:
        session.get(StrayServer, stray.id).created_at = utcnow() - timedelta(seconds=61)
    sweep_strays()

    (stray,) = bench.strays(request_id)
    assert stray.state is StrayState.DELETED and stray.server_id is None
    assert bench.client.count("delete_servers") == 0
    assert any("no server has marker o1a1" in (d or "") for _f, _t, d in bench.events(request_id))
