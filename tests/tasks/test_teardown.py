"""The teardown steps with a stub cloud: the order of calls, a lost answer, a redelivered
message, a cancel, and which requests a teardown takes."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import selectinload

from bms.exceptions import BadRequest, CloudTimeout, NotFound
from bms.jobs import Job
from models.db import session_scope
from models.records import AttachmentState, ServerRequest, VolumeAttachment
from models.states import RequestState, Step
from tasks import teardown
from tasks.base import StaleChain, Wait
from tasks.control import cancel
from tasks.plan import next_task_name
from tests.factories import add_request
from tests.tasks.stubs import body, read

S = RequestState
A = AttachmentState
STEPS = {
    "bms.detach_volume": teardown.detach_volume,
    "bms.poll_detach_job": teardown.poll_detach_job,
    "bms.teardown_server": teardown.teardown_server,
    "bms.poll_teardown_job": teardown.poll_teardown_job,
}
LOST = CloudTimeout("read timed out", "DELETE", "https://bms.example/detachvolume")
LOST_DELETE = CloudTimeout("read timed out", "POST", "https://bms.example/delete")


def done(job_id: str) -> Job:
    return Job.from_api({"status": "SUCCESS", "job_id": job_id})


def failed_job(job_id: str, code: str = "BMS.0001") -> Job:
    return Job.from_api({"status": "FAIL", "job_id": job_id, "error_code": code})


@pytest.fixture
def sessions(database, redis_url):
    return database.sessions


def with_server(sessions, state: RequestState = S.ACTIVE, volumes: int = 2) -> uuid.UUID:
    with session_scope(sessions) as session:
        request = add_request(session, state)
        request.server_id = "srv-1"
        if state is S.FAILED:
            request.failed_step = Step.ATTACH
        for position in range(volumes):
            session.add(VolumeAttachment(request_id=request.id, position=position,
                                         volume_id=f"vol-{position}", state=A.ATTACHED,
                                         attempt=1))  # fmt: skip
        return request.id


def row(sessions, request_id) -> ServerRequest:
    return read(sessions, ServerRequest, request_id, selectinload(ServerRequest.attachments))


def run(sessions, request_id, name: str | None = None):
    """Run the step the row names (or ``name``) as its chain would; returns its ``Next``."""
    stored = row(sessions, request_id)
    name = name or next_task_name(stored)
    return body(STEPS[name])(request_id=str(request_id), fence=stored.fence)


def run_to_end(sessions, request_id, limit: int = 20) -> list[str]:
    names = []
    while (name := next_task_name(row(sessions, request_id))) is not None and len(names) < limit:
        names.append(name)
        run(sessions, request_id, name)
    return names


def test_volumes_are_detached_one_by_one_then_the_server_is_deleted(sessions, stub_cloud):
    request_id = with_server(sessions)
    stub_cloud.answers = {
        "detach_volume": ["job-d0", "job-d1"],
        "show_job": lambda job_id: done(job_id),
        "delete_servers": "job-del",
    }

    started = teardown.start_teardown(sessions, [request_id])

    assert started.started == [request_id]
    assert run_to_end(sessions, request_id) == [
        "bms.detach_volume", "bms.poll_detach_job",
        "bms.detach_volume", "bms.poll_detach_job",
        "bms.teardown_server", "bms.poll_teardown_job",
    ]  # fmt: skip
    stored = row(sessions, request_id)
    assert stored.state is S.TORN_DOWN
    assert [a.state for a in stored.attachments] == [A.DETACHED, A.DETACHED]
    assert stub_cloud.called("detach_volume") == [("srv-1", "vol-0"), ("srv-1", "vol-1")]
    assert stub_cloud.called("delete_servers") == [(["srv-1"],)]


def test_a_lost_detach_answer_is_looked_up_before_detaching_again(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=1)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {"detach_volume": LOST}

    with pytest.raises(CloudTimeout):
        run(sessions, request_id)
    assert row(sessions, request_id).attachments[0].state is A.DETACHING  # the intent

    # The detach went through: the server no longer lists the volume. No second call.
    stub_cloud.answers = {"list_volume_attachments": lambda server_id: []}
    run(sessions, request_id)

    assert row(sessions, request_id).attachments[0].state is A.DETACHED
    assert len(stub_cloud.called("detach_volume")) == 1


def test_a_lost_detach_that_never_arrived_is_sent_again(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=1)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {"detach_volume": [LOST, "job-d0"],
                          "list_volume_attachments": lambda s: [{"volumeId": "vol-0"}]}  # fmt: skip

    with pytest.raises(CloudTimeout):
        run(sessions, request_id)
    run(sessions, request_id)

    assert row(sessions, request_id).attachments[0].job_id == "job-d0"
    assert len(stub_cloud.called("detach_volume")) == 2


def test_a_lost_delete_answer_watches_the_server_instead_of_deleting_again(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=0)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {"delete_servers": LOST_DELETE}

    with pytest.raises(CloudTimeout):
        run(sessions, request_id)
    assert row(sessions, request_id).teardown_intent_at is not None

    deleting = {"status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"}
    stub_cloud.answers = {"show_server": [deleting, NotFound(404, "BMS.0000", "gone")]}
    with pytest.raises(Wait):
        run(sessions, request_id)
    run(sessions, request_id)

    assert row(sessions, request_id).state is S.TORN_DOWN
    assert len(stub_cloud.called("delete_servers")) == 1


def test_a_redelivered_message_calls_the_cloud_once(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=1)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {"detach_volume": "job-d0"}
    fence = row(sessions, request_id).fence

    first = body(teardown.detach_volume)(request_id=str(request_id), fence=fence)
    # The copy carries the token the first one handed on: it owns nothing and stops.
    with pytest.raises(StaleChain):
        body(teardown.detach_volume)(request_id=str(request_id), fence=fence)

    assert len(stub_cloud.called("detach_volume")) == 1
    assert first.signature.task == "bms.poll_detach_job"
    # A re-run that does own the request (the reconciler's) finds the job and polls it.
    again = run(sessions, request_id, "bms.detach_volume")
    assert again.signature.task == "bms.poll_detach_job"

    stub_cloud.answers = {"show_job": done, "delete_servers": "job-del"}
    run_to_end(sessions, request_id)
    assert row(sessions, request_id).state is S.TORN_DOWN
    for name in STEPS:  # every step of a torn-down request is a no-op
        assert run(sessions, request_id, name).signature is None
    assert len(stub_cloud.called("delete_servers")) == 1


def test_a_cancel_during_teardown_stops_it_and_keeps_the_server(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=2)
    teardown.start_teardown(sessions, [request_id])

    def detach_then_cancelled(server_id, volume_id):
        assert cancel(sessions, [request_id]) == [request_id]  # arrives while the call runs
        return "job-d0"

    stub_cloud.answers = {"detach_volume": detach_then_cancelled}
    outcome = run(sessions, request_id)

    assert outcome.signature is None  # nothing more is sent
    stored = row(sessions, request_id)
    assert stored.state is S.CANCELLED
    assert stored.cleanup_server_id is None  # the cancel deletes nothing
    assert stored.attachments[0].job_id == "job-d0"  # what the cloud started is recorded
    assert next_task_name(stored) is None
    assert stub_cloud.called("delete_servers") == []

    # A later teardown takes it again and finishes the detach it had started.
    stub_cloud.answers = {"show_job": done, "detach_volume": "job-d1", "delete_servers": "j"}
    assert teardown.start_teardown(sessions, [request_id]).started == [request_id]
    assert run_to_end(sessions, request_id)[0] == "bms.poll_detach_job"
    assert row(sessions, request_id).state is S.TORN_DOWN


def test_a_delete_refused_for_good_fails_the_request_at_teardown(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=0)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {"delete_servers": BadRequest(400, "BMS.0033", "prePaid server")}

    run(sessions, request_id)

    stored = row(sessions, request_id)
    assert (stored.state, stored.failed_step, stored.last_error_code) == (
        S.FAILED, Step.TEARDOWN, "BMS.0033",
    )  # fmt: skip
    # A FAILED teardown is taken by the next teardown again.
    assert teardown.start_teardown(sessions, [request_id]).started == [request_id]


def test_a_failed_delete_job_is_deleted_again_within_the_budget(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=0)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {
        "delete_servers": ["job-1", "job-2"],
        "show_job": [failed_job("job-1"), done("job-2")],
    }

    run_to_end(sessions, request_id)

    assert row(sessions, request_id).state is S.TORN_DOWN
    assert len(stub_cloud.called("delete_servers")) == 2


def test_a_volume_not_attached_any_more_is_not_an_error(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=1)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {
        "detach_volume": BadRequest(400, "BMS.0114", "Volume vol-0 is not in server srv-1"),
        "delete_servers": "job-del",
        "show_job": done,
    }

    run_to_end(sessions, request_id)

    stored = row(sessions, request_id)
    assert stored.state is S.TORN_DOWN and stored.attachments[0].state is A.DETACHED


def test_teardown_takes_only_requests_that_have_a_server(sessions, stub_cloud):
    active = with_server(sessions, S.ACTIVE, volumes=0)
    failed = with_server(sessions, S.FAILED, volumes=0)
    cancelled = with_server(sessions, S.CANCELLED, volumes=0)
    building = with_server(sessions, S.BUILDING, volumes=0)
    with session_scope(sessions) as session:
        no_server = add_request(session, S.FAILED).id

    started = teardown.start_teardown(sessions, [active, failed, cancelled, building, no_server])

    assert started.started == [active, failed, cancelled]
    assert dict(started.skipped) == {
        building: "BUILDING: cancel it first",
        no_server: "has no server",
    }
    assert row(sessions, failed).failed_step is None


def test_a_delete_job_the_cloud_forgot_is_settled_by_the_server(sessions, stub_cloud):
    request_id = with_server(sessions, volumes=0)
    teardown.start_teardown(sessions, [request_id])
    stub_cloud.answers = {
        "delete_servers": "job-del",
        "show_job": NotFound(404, "BMS.0100", "no such job"),
        "show_server": {"status": "DELETED", "OS-EXT-STS:task_state": None},
    }

    run_to_end(sessions, request_id)

    assert row(sessions, request_id).state is S.TORN_DOWN
    assert len(stub_cloud.called("delete_servers")) == 1
