"""The delete steps' bodies with a scripted cloud: budgets per server, bounded waits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bms.exceptions import BadRequest, CloudConnectionError, NotFound
from models.base import utcnow
from models.db import session_scope
from models.records import AttachmentState, CloudJob, JobKind, VolumeAttachment
from models.states import RequestState
from tasks.base import Wait
from tasks.cleanup import delete_server, poll_delete_job
from tasks.errors import TIMEOUT_CODE
from tests.tasks.stepkit import job, next_task

S = RequestState


def cancelled_with_server(bench, **fields):
    return bench.add(S.CANCELLED, cleanup_server_id="srv-1", **fields)


def test_deletes_of_earlier_servers_do_not_spend_this_servers_budget(bench):
    request_id = cancelled_with_server(bench)
    with session_scope(bench.sessions) as session:
        for n in range(3):  # three failed attempts' servers, deleted long ago
            session.add(CloudJob(job_id=f"old-{n}", request_id=request_id, kind=JobKind.DELETE))
    bench.client.on("delete_servers", "del-1")
    delete_server(bench.chain(request_id))
    bench.client.on("show_job", job("FAIL", code="BMS.9999", job_id="del-1"))

    outcome = poll_delete_job(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.cleanup_server_id == "srv-1"  # deleted again, not given up
    assert stored.cleanup_job_id is None and stored.cleanup_attempts == 1
    assert next_task(outcome) == "bms.delete_server"


def test_a_delete_job_that_never_ends_is_bounded(bench):
    request_id = cancelled_with_server(bench, cleanup_job_id="del-1", cleanup_attempts=3)
    with session_scope(bench.sessions) as session:
        session.add(CloudJob(job_id="del-1", request_id=request_id, kind=JobKind.DELETE))
    with session_scope(bench.sessions) as session:
        long_ago = utcnow() - timedelta(days=1)
        session.execute(update(CloudJob).values(created_at=long_ago))
    bench.client.on("show_job", job("RUNNING", job_id="del-1"))

    outcome = poll_delete_job(bench.chain(request_id))  # before: polled forever

    stored = bench.get(request_id)
    assert stored.cleanup_server_id is None
    assert stored.last_error_code == TIMEOUT_CODE
    assert "delete it by hand" in stored.last_error_message
    assert next_task(outcome) is None


def test_a_server_already_gone_ends_the_cleanup(bench):
    from bms.exceptions import NotFound

    request_id = cancelled_with_server(bench)
    bench.client.on("delete_servers", NotFound(404, "BMS.0040", "gone"))

    assert next_task(delete_server(bench.chain(request_id))) is None
    assert bench.get(request_id).cleanup_server_id is None


def test_a_delete_whose_answer_was_lost_is_not_given_up_when_the_retry_is_refused(bench):
    # The delete POST reached the cloud but its answer was lost; the re-sent delete is refused
    # because the server is being deleted. That delete's job is unknown and may still fail:
    # the server must stay in the request's cleanup until it is seen gone.
    request_id = cancelled_with_server(bench)
    bench.client.on("delete_servers", CloudConnectionError("dropped", "POST", "/delete"))
    with pytest.raises(CloudConnectionError):
        delete_server(bench.chain(request_id))
    being_deleted = BadRequest(400, "BMS.0040", "The server srv-1 is being deleted.")
    bench.client.on("delete_servers", being_deleted)

    deleting = {"id": "srv-1", "status": "ACTIVE", "OS-EXT-STS:task_state": "deleting"}
    bench.client.on("show_server", deleting)

    with pytest.raises(Wait):
        delete_server(bench.chain(request_id))  # watched, not given up

    assert bench.get(request_id).cleanup_server_id == "srv-1"
    # That unknown delete failed: the server is back, and is deleted again.
    bench.client.on("delete_servers", "del-2")
    assert next_task(delete_server(bench.chain(request_id))) == "bms.poll_delete_job"
    assert bench.get(request_id).cleanup_job_id == "del-2"


def test_a_delete_refused_for_good_names_the_server_for_an_operator(bench):
    request_id = cancelled_with_server(bench)
    bench.client.on("delete_servers", BadRequest(400, "BMS.0208", "prePaid: unsubscribe instead"))
    bench.client.on("show_server", {"id": "srv-1", "status": "ACTIVE"})

    assert next_task(delete_server(bench.chain(request_id))) is None

    stored = bench.get(request_id)
    assert stored.cleanup_server_id is None
    assert stored.last_error_code == "BMS.0208"
    assert "srv-1" in stored.last_error_message and "by hand" in stored.last_error_message


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_delete_job_the_cloud_forgot_is_settled_by_deleting_again(bench, attempts):
    # Before: "unreadable" ended the cleanup and the server, maybe still running, was forgotten.
    request_id = cancelled_with_server(bench, cleanup_job_id="del-1", cleanup_attempts=attempts)
    bench.client.on("show_job", NotFound(404, "BMS.0013", "job not found"))

    outcome = poll_delete_job(bench.chain(request_id))

    stored = bench.get(request_id)
    if attempts < bench.settings.max_attempts:
        assert (stored.cleanup_server_id, stored.cleanup_job_id) == ("srv-1", None)
        assert next_task(outcome) == "bms.delete_server"
    else:  # the budget holds: an operator is told which server
        assert stored.cleanup_server_id is None
        assert "srv-1" in stored.last_error_message and "by hand" in stored.last_error_message


def states_of_volumes(bench, request_id) -> list[str]:
    return [a.state.value for a in bench.get(request_id).attachments]


@pytest.mark.parametrize("how", ["job done", "already gone"])
def test_volumes_of_a_cancelled_server_read_detached_once_it_is_deleted(bench, how):
    """``bmsctl show`` printed a volume ATTACHING for ever after its server was deleted."""
    request_id = cancelled_with_server(bench, server_id="srv-1", volumes=3)
    set_volumes(bench, request_id, ["ATTACHED", "ATTACHING", "PENDING"])
    if how == "job done":
        bench.client.on("delete_servers", "del-1")
        delete_server(bench.chain(request_id))
        bench.client.on("show_job", job("SUCCESS", job_id="del-1"))
        poll_delete_job(bench.chain(request_id))
    else:
        bench.client.on("delete_servers", NotFound(404, "BMS.0040", "gone"))
        delete_server(bench.chain(request_id))

    assert bench.get(request_id).cleanup_server_id is None
    assert states_of_volumes(bench, request_id) == ["DETACHED", "DETACHED", "PENDING"]


def test_an_earlier_attempts_server_deleted_leaves_the_volumes_alone(bench):
    request_id = cancelled_with_server(bench, server_id="srv-2", volumes=1)
    set_volumes(bench, request_id, ["ATTACHED"])
    bench.client.on("delete_servers", NotFound(404, "BMS.0040", "gone"))

    delete_server(bench.chain(request_id))  # srv-1 gone: not the server the volume is on

    assert states_of_volumes(bench, request_id) == ["ATTACHED"]


def set_volumes(bench, request_id, states: list[str]) -> None:
    with session_scope(bench.sessions) as session:
        for position, state in enumerate(states):
            session.execute(
                update(VolumeAttachment)
                .where(VolumeAttachment.request_id == request_id)
                .where(VolumeAttachment.position == position)
                .values(state=AttachmentState(state))
            )
