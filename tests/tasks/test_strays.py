"""The stray sweeper with a scripted cloud: a late create's servers found, deleted, noted."""

from __future__ import annotations

from datetime import timedelta

from models.db import session_scope
from models.records import JobKind, StrayServer, StrayState
from models.states import RequestState
from tasks.strays import MAX_STRAY_ATTEMPTS, sweep_strays
from tasks.timing import DEADLINES
from tests.tasks.stepkit import job

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
