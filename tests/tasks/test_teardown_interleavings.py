"""The teardown steps on the stub bench: what happens between a call and its answer.

Each test scripts the cloud's answers and what runs during a call (a second copy of the
message, a second teardown), then drives the request to its end as its chain would, and checks
the cloud was asked once for each thing that must happen once.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from sqlalchemy import func, select

from bms.exceptions import BadRequest, CloudTimeout, NotFound
from models.db import session_scope
from models.records import AttachmentState, CloudJob, JobKind, ServerRequest
from models.states import RequestState
from tasks import teardown
from tasks.base import Chain, StaleChain, Wait
from tasks.plan import next_task_name
from tests.tasks.stepkit import job, next_task

S = RequestState
A = AttachmentState
STEPS = {
    "bms.detach_volume": teardown.detach_volume,
    "bms.poll_detach_job": teardown.poll_detach_job,
    "bms.teardown_server": teardown.teardown_server,
    "bms.poll_teardown_job": teardown.poll_teardown_job,
}
LOST_DETACH = CloudTimeout("read timed out", "DELETE", "/detachvolume/vol-1")
LOST_DELETE = CloudTimeout("read timed out", "POST", "/baremetalservers/delete")
GONE = NotFound(404, "BMS.0040", "The server srv-1 does not exist.")
DETACHING = BadRequest(400, "BMS.0105", "The volume vol-1 is detaching.")
BEING_DELETED = BadRequest(400, "BMS.0040", "The server srv-1 is being deleted.")


def done(job_id: str):
    return job("SUCCESS", "srv-1", job_id=job_id)


def torn_down_candidate(bench, volumes: int = 1, state: RequestState = S.ACTIVE) -> uuid.UUID:
    """A request with server ``srv-1`` and ``volumes`` attached, taken by a teardown."""
    request_id = bench.add(state, volumes=volumes, server_id="srv-1")
    with session_scope(bench.sessions) as session:
        for attachment in session.get(ServerRequest, request_id).attachments:
            attachment.state, attachment.attempt = A.ATTACHED, 1
    assert teardown.start_teardown(bench.sessions, [request_id]).started == [request_id]
    return request_id


def step(bench, request_id, name: str | None = None):
    """Run the step the row names (or ``name``) with the row's token, as its message would."""
    name = name or next_task_name(bench.get(request_id))
    return STEPS[name](bench.chain(request_id))


def run_to_end(bench, request_id, limit: int = 20) -> list[str]:
    """Every step the row names in turn, a Wait re-running the same step (as the wrapper does)."""
    names = []
    while (name := next_task_name(bench.get(request_id))) is not None and len(names) < limit:
        names.append(name)
        with contextlib.suppress(Wait):
            step(bench, request_id, name)
    return names


def jobs(bench, request_id, kind: JobKind) -> int:
    with session_scope(bench.sessions) as session:
        query = select(func.count()).select_from(CloudJob)
        return session.scalar(query.where(CloudJob.request_id == request_id, CloudJob.kind == kind))


# -- a lost answer ----------------------------------------------------------------------------


def test_a_lost_detach_answer_while_the_detach_runs_is_not_a_second_detach_job(bench):
    request_id = torn_down_candidate(bench)
    bench.client.on("detach_volume", LOST_DETACH)
    with pytest.raises(CloudTimeout):
        step(bench, request_id)
    assert bench.get(request_id).attachments[0].state is A.DETACHING  # the intent stays

    # The re-run looks first: still listed (the lost detach runs), so it asks again and the
    # cloud refuses (the volume is detaching): it waits, no job is recorded.
    bench.client.on("list_volume_attachments", [{"volumeId": "vol-1"}])
    bench.client.on("detach_volume", DETACHING)
    with pytest.raises(Wait):
        step(bench, request_id)
    # The lost detach ended: the volume is no longer listed.
    bench.client.on("list_volume_attachments", [])
    bench.client.on("delete_servers", "job-del")
    bench.client.on("show_job", done("job-del"))

    assert run_to_end(bench, request_id) == [
        "bms.detach_volume", "bms.teardown_server", "bms.poll_teardown_job",
    ]  # fmt: skip
    stored = bench.get(request_id)
    assert stored.state is S.TORN_DOWN and stored.attachments[0].state is A.DETACHED
    assert jobs(bench, request_id, JobKind.DETACH) == 0
    assert bench.client.count("delete_servers") == 1


def test_a_lost_delete_answer_is_watched_not_sent_again(bench):
    request_id = torn_down_candidate(bench, volumes=0)
    bench.client.on("delete_servers", LOST_DELETE)
    with pytest.raises(CloudTimeout):
        step(bench, request_id)
    deleting = {"id": "srv-1", "status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"}
    bench.client.on("show_server", deleting, deleting, GONE)

    names = run_to_end(bench, request_id)

    assert names == ["bms.teardown_server"] * 3
    assert bench.get(request_id).state is S.TORN_DOWN
    assert bench.client.count("delete_servers") == 1


# -- a message delivered twice ----------------------------------------------------------------


def test_a_second_copy_during_the_detach_call_makes_no_second_job(bench):
    request_id = torn_down_candidate(bench)
    copy = bench.chain(request_id)  # the redelivered message: the same token

    def second_copy_runs():
        # It finds the intent, the volume still listed, asks again and is refused.
        bench.client.on("list_volume_attachments", [{"volumeId": "vol-1"}])
        bench.client.on("detach_volume", DETACHING)
        with pytest.raises(Wait):
            teardown.detach_volume(copy)
        bench.client.on("detach_volume", "unused")

    bench.client.on("detach_volume", bench.during(second_copy_runs, "job-d1"))
    first = teardown.detach_volume(bench.chain(request_id))

    assert next_task(first) is None  # the copy's re-run owns the request now
    assert bench.get(request_id).attachments[0].job_id == "job-d1"  # recorded all the same
    with pytest.raises(StaleChain):  # a third copy with the old token stops at once
        teardown.detach_volume(Chain(str(request_id), copy.fence - 1))
    # The copy's re-run (it owns the request) finds the job and hands on to its poll.
    assert next_task(teardown.detach_volume(bench.chain(request_id))) == "bms.poll_detach_job"
    bench.client.on("show_job", done("job-d1"), done("job-del"))
    bench.client.on("delete_servers", "job-del")

    assert run_to_end(bench, request_id) == [
        "bms.poll_detach_job", "bms.teardown_server", "bms.poll_teardown_job",
    ]  # fmt: skip
    assert bench.get(request_id).state is S.TORN_DOWN
    assert jobs(bench, request_id, JobKind.DETACH) == 1
    assert bench.client.count("delete_servers") == 1


def test_a_second_copy_during_the_delete_call_watches_the_one_delete(bench):
    request_id = torn_down_candidate(bench, volumes=0)
    copy = bench.chain(request_id)
    live = {"id": "srv-1", "status": "ACTIVE", "OS-EXT-STS:task_state": None}

    def second_copy_runs():
        bench.client.on("show_server", live)
        bench.client.on("delete_servers", BEING_DELETED)
        with pytest.raises(Wait):
            teardown.teardown_server(copy)

    bench.client.on("delete_servers", bench.during(second_copy_runs, "job-del"))
    first = teardown.teardown_server(bench.chain(request_id))

    assert next_task(first) is None
    assert bench.get(request_id).teardown_job_id == "job-del"
    bench.client.on("show_job", done("job-del"))

    assert run_to_end(bench, request_id) == ["bms.poll_teardown_job"]
    assert bench.get(request_id).state is S.TORN_DOWN
    assert jobs(bench, request_id, JobKind.DELETE) == 1


def test_a_redelivered_poll_after_the_end_does_nothing(bench):
    request_id = torn_down_candidate(bench, volumes=1)
    bench.client.on("detach_volume", "job-d1")
    bench.client.on("show_job", done("job-d1"), done("job-del"))
    bench.client.on("delete_servers", "job-del")
    run_to_end(bench, request_id)
    calls = len(bench.client.calls)

    for name, task in STEPS.items():
        assert next_task(task(bench.chain(request_id))) is None, name

    assert bench.get(request_id).state is S.TORN_DOWN
    assert len(bench.client.calls) == calls  # no cloud call


# -- a server already gone ----------------------------------------------------------------------


def test_a_server_deleted_outside_is_torn_down_without_error(bench):
    request_id = torn_down_candidate(bench, volumes=2)
    bench.client.on("detach_volume", GONE)
    bench.client.on("delete_servers", GONE)

    assert run_to_end(bench, request_id) == [
        "bms.detach_volume", "bms.detach_volume", "bms.teardown_server",
    ]  # fmt: skip

    stored = bench.get(request_id)
    assert stored.state is S.TORN_DOWN and stored.failed_step is None
    assert [a.state for a in stored.attachments] == [A.DETACHED, A.DETACHED]
    assert "already gone" in bench.events(request_id)[-1][2]


# -- a teardown requested twice -----------------------------------------------------------------


def test_a_teardown_requested_twice_starts_one(bench):
    request_id = torn_down_candidate(bench, volumes=1)
    fence = bench.get(request_id).fence

    again = teardown.start_teardown(bench.sessions, [request_id])

    assert again.started == [] and again.skipped == [(request_id, "already tearing down")]
    assert bench.get(request_id).fence == fence  # the running chain keeps the request
    bench.client.on("detach_volume", "job-d1")
    bench.client.on("show_job", done("job-d1"), done("job-del"))
    bench.client.on("delete_servers", "job-del")
    run_to_end(bench, request_id)
    late = teardown.start_teardown(bench.sessions, [request_id])
    assert late.skipped == [(request_id, "already torn down")]
    assert (bench.client.count("detach_volume"), bench.client.count("delete_servers")) == (1, 1)


def test_a_teardown_requested_during_the_delete_call_starts_nothing(bench):
    request_id = torn_down_candidate(bench, volumes=0)
    second: list = []
    starts = bench.during(
        lambda: second.append(teardown.start_teardown(bench.sessions, [request_id])), "job-del"
    )
    bench.client.on("delete_servers", starts)
    bench.client.on("show_job", done("job-del"))

    run_to_end(bench, request_id)

    assert second[0].started == []
    assert bench.get(request_id).state is S.TORN_DOWN
    assert bench.client.count("delete_servers") == 1
