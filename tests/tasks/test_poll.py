"""The polling steps' bodies with a scripted cloud: cancels mid-poll, bounded waits, odd jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bms.exceptions import NotFound
from models.base import utcnow
from models.db import session_scope
from models.records import AttachmentState, CloudJob, JobKind
from models.states import RequestState, Step
from tasks.base import StaleChain, Wait
from tasks.control import dispatch
from tasks.create import create_server
from tasks.errors import TIMEOUT_CODE
from tasks.poll import poll_attach_job, poll_create_job, wait_server_built
from tasks.timing import DEADLINES
from tests.tasks.stepkit import job, next_task
from tests.tasks.test_create import listed

S = RequestState


def building(bench, **fields):
    fields = {"attempt": 1, **fields}
    request_id = bench.add(S.BUILDING, job_id="job-1", **fields)
    with session_scope(bench.sessions) as session:
        session.add(CloudJob(job_id="job-1", request_id=request_id, kind=JobKind.CREATE))
    return request_id


def test_a_cancel_during_the_create_poll_deletes_the_server_at_once(bench):
    request_id = building(bench)
    cancels = bench.cancel_during(request_id, job("SUCCESS", "srv-1"))
    bench.client.on("show_job", cancels)

    outcome = poll_create_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED
    assert stored.cleanup_server_id == "srv-1"
    assert next_task(outcome) == "bms.delete_server"


def test_a_running_job_hands_the_request_to_the_next_poll_only(bench):
    request_id = building(bench)
    first_copy = bench.chain(request_id)
    second_copy = bench.chain(request_id)  # the same message, delivered twice
    bench.client.on("show_job", job("RUNNING"))

    with pytest.raises(Wait):
        poll_create_job(first_copy)

    assert first_copy.fence == second_copy.fence + 1  # the re-run carries the new token
    with pytest.raises(StaleChain):
        poll_create_job(second_copy)
    assert bench.client.count("show_job") == 1


def test_a_successful_job_without_a_server_fails_the_attempt_with_a_reason(bench):
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS"))  # no sub_job names a server

    poll_create_job(bench.chain(request_id))  # before: IndexError, the chain died

    stored = bench.get(request_id)
    assert stored.state is S.CREATING  # retryable: a fresh attempt
    assert stored.last_error_code == "ORCH.NO_SERVER"


def test_an_adopted_server_that_never_builds_times_out_whatever_touches_the_row(bench):
    request_id = bench.add(S.BUILDING, server_id="srv-1", attempt=3)
    bench.client.on("show_server", {"id": "srv-1", "status": "BUILD"})
    with pytest.raises(Wait):
        wait_server_built(bench.chain(request_id))
    deadline = bench.get(request_id).wait_deadline_at
    assert deadline is not None

    bench.set(request_id, wait_deadline_at=utcnow() - timedelta(seconds=1))
    dispatch(bench.sessions, [request_id])  # the reconciler's bump no longer resets the clock
    wait_server_built(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.FAILED and stored.last_error_code == TIMEOUT_CODE
    assert stored.failed_step is Step.CREATE
    assert stored.cleanup_server_id == "srv-1"  # the server that never built is deleted


def attaching(bench):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    with session_scope(bench.sessions) as session:
        session.add(CloudJob(job_id="job-a", request_id=request_id, kind=JobKind.ATTACH))
    request = bench.get(request_id)
    with session_scope(bench.sessions) as session:
        attachment = session.merge(request.attachments[0])
        attachment.state, attachment.job_id, attachment.attempt = (
            AttachmentState.ATTACHING,
            "job-a",
            1,
        )
    return request_id


def test_a_cancel_during_the_attach_poll_hands_the_request_to_cleanup(bench):
    request_id = attaching(bench)
    cancels = bench.cancel_during(request_id, job("SUCCESS", "srv-1"))
    bench.client.on("show_job", cancels)

    outcome = poll_attach_job(bench.chain(request_id))  # before: IllegalTransition

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED
    assert next_task(outcome) == "bms.delete_server"


def test_a_create_job_past_its_deadline_is_handed_to_the_stray_sweeper(bench):
    # The job still runs in the cloud and may yet make a server: it must not be forgotten.
    request_id = building(bench)
    with session_scope(bench.sessions) as session:
        session.get(CloudJob, "job-1").created_at = utcnow() - timedelta(
            seconds=DEADLINES[JobKind.CREATE] + 1
        )
    bench.client.on("show_job", job("RUNNING"))

    poll_create_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.FAILED and stored.last_error_code == TIMEOUT_CODE
    # before: no stray, and the server the job made later stayed billed
    assert [s.create_job_id for s in bench.strays(request_id)] == ["job-1"]


@pytest.mark.parametrize("state", [S.BUILDING, S.CANCELLED])
def test_a_create_job_the_cloud_forgot_is_resolved_by_its_marker(bench, state):
    # Before: the 404 FAILED the request at poll_create, and every retry polled the same
    # forgotten job and FAILED again, while the server it made ran on.
    request_id = building(bench, create_marker="o1a1")
    bench.set(request_id, state=state)
    bench.client.on("show_job", NotFound(404, "BMS.0013", "job not found"))

    outcome = poll_create_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is (S.CREATING if state is S.BUILDING else S.CANCELLED)
    assert (stored.job_id, stored.create_marker) == (None, "o1a1")
    assert stored.create_intent_at is not None  # a lost answer: look before any POST
    assert next_task(outcome) == "bms.create_server"

    bench.client.on("list_servers", listed(("srv-made", "o1a1")))
    outcome = create_server(bench.chain(request_id))

    stored = bench.get(request_id)
    assert bench.client.count("create_servers") == 0
    if state is S.BUILDING:
        assert (stored.state, stored.server_id) == (S.BUILDING, "srv-made")
        assert next_task(outcome) == "bms.wait_server_built"
    else:
        assert stored.cleanup_server_id == "srv-made"
        assert next_task(outcome) == "bms.delete_server"


def test_an_attach_job_the_cloud_forgot_is_settled_from_the_disk(bench):
    request_id = attaching(bench)
    bench.client.on("show_job", NotFound(404, "BMS.0013", "job not found"))

    outcome = poll_attach_job(bench.chain(request_id))  # before: FAILED at attach

    (attachment,) = bench.get(request_id).attachments
    assert bench.get(request_id).state is S.ATTACHING
    assert attachment.job_id is None and attachment.intent_at is not None
    assert next_task(outcome) == "bms.attach_volume"  # which reads the disk before any POST


def test_a_create_job_the_cloud_keeps_forgetting_ends_within_the_budget(bench):
    request_id = building(bench, create_marker="o1a1", attempt=3)
    bench.client.on("show_job", NotFound(404, "BMS.0013", "job not found"))

    poll_create_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert (stored.state, stored.last_error_code) == (S.FAILED, "ORCH.JOB_UNKNOWN")
    assert stored.create_intent_at is not None  # a retry looks the marker up first


def test_an_attach_job_done_goes_on_to_the_next_volume_in_the_same_run(bench):
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=2)
    with session_scope(bench.sessions) as session:
        session.add(CloudJob(job_id="job-a", request_id=request_id, kind=JobKind.ATTACH))
    with session_scope(bench.sessions) as session:
        attachment = session.merge(bench.get(request_id).attachments[0])
        attachment.state, attachment.job_id, attachment.attempt = (
            AttachmentState.ATTACHING, "job-a", 1)  # fmt: skip
    bench.client.on("show_job", job("SUCCESS"))
    bench.client.on("attach_volume", "job-b")

    outcome = poll_attach_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert [a.state for a in stored.attachments] == [AttachmentState.ATTACHED] * 2
    assert stored.state is S.TAGGING
    assert next_task(outcome) == "bms.apply_tags"  # before: an attach message, then its poll
    assert [args[1] for name, args in bench.client.calls if name == "attach_volume"] == ["vol-2"]
