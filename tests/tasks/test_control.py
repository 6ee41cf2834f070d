"""Cancel, retry and the reconciler's query, against a migrated database (both backends).

Dispatch sends to the session's Redis; no worker runs here, the rows are what is checked.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.base import utcnow
from models.records import AttachmentState, ServerRequest, VolumeAttachment
from models.states import RequestState, Step
from tasks.base import advance
from tasks.control import cancel, dispatch, retry, stalled_request_ids
from tests.factories import add_request

S = RequestState


@pytest.fixture
def sessions(database, redis_url):
    return database.sessions


def failed(session, step: Step, **fields) -> ServerRequest:
    request = add_request(session, S.FAILED)
    request.failed_step = step
    request.last_error_code = "BMS.3037"
    request.attempt = 3
    for name, value in fields.items():
        setattr(request, name, value)
    session.commit()
    return request


def reload(sessions, request_id) -> ServerRequest:
    with sessions() as session:
        return session.get(ServerRequest, request_id)


def test_retry_of_a_failed_create_starts_a_fresh_attempt_budget(sessions):
    with sessions() as session:
        request = failed(session, Step.CREATE, create_marker="old")
    assert retry(sessions, [request.id]) == [request.id]
    stored = reload(sessions, request.id)
    assert stored.state is S.CREATING
    assert (stored.attempt, stored.failed_step, stored.last_error_code) == (0, None, None)
    assert stored.create_marker is None
    assert stored.fence == 1  # a new chain owns it


@pytest.mark.parametrize("made", [{"job_id": "job-7"}, {"server_id": "srv-7"}])
def test_retry_of_a_failed_create_whose_answer_came_later_resumes_at_what_it_made(sessions, made):
    # A create answered after another copy FAILED the request is recorded on the row (the
    # cloud made it); a retry that created again would leave that server billed and unowned.
    with sessions() as session:
        request = failed(session, Step.CREATE, create_marker="o1a1", **made)
    retry(sessions, [request.id])
    stored = reload(sessions, request.id)
    assert stored.state is S.BUILDING
    assert (stored.job_id, stored.server_id) == (made.get("job_id"), made.get("server_id"))


def test_retry_of_a_failed_poll_looks_at_the_same_job_again(sessions):
    with sessions() as session:
        request = failed(session, Step.POLL_CREATE, job_id="job-1")
    retry(sessions, [request.id])
    stored = reload(sessions, request.id)
    assert (stored.state, stored.job_id) == (S.BUILDING, "job-1")


def test_retry_of_a_failed_poll_without_a_job_creates_again(sessions):
    with sessions() as session:
        request = failed(session, Step.POLL_CREATE)
    retry(sessions, [request.id])
    assert reload(sessions, request.id).state is S.CREATING


def test_retry_of_a_failed_attach_resumes_at_that_volume(sessions):
    with sessions() as session:
        request = failed(session, Step.ATTACH, server_id="srv-1")
        session.add_all(
            [
                VolumeAttachment(request_id=request.id, position=0, volume_id="v0",
                                 state=AttachmentState.ATTACHED, attempt=1),
                VolumeAttachment(request_id=request.id, position=1, volume_id="v1",
                                 state=AttachmentState.FAILED, attempt=3),
            ]
        )  # fmt: skip
        session.commit()
    retry(sessions, [request.id])
    with sessions() as session:
        stored = session.get(ServerRequest, request.id)
        assert (stored.state, stored.server_id) == (S.ATTACHING, "srv-1")
        states = [(a.state, a.attempt) for a in stored.attachments]
    assert states == [(AttachmentState.ATTACHED, 1), (AttachmentState.PENDING, 0)]


def test_retry_ignores_requests_that_did_not_fail(sessions):
    with sessions() as session:
        request = add_request(session, S.ACTIVE)
    assert retry(sessions, [request.id]) == []
    assert reload(sessions, request.id).state is S.ACTIVE


def test_cancel_marks_an_existing_server_for_deletion(sessions):
    with sessions() as session:
        pending = add_request(session, S.PENDING, name="a")
        built = add_request(session, S.ATTACHING, name="b")
        built.server_id = "srv-9"
        done = add_request(session, S.ACTIVE, name="c")
        session.commit()
    assert cancel(sessions, [pending.id, built.id, done.id]) == [pending.id, built.id]
    assert reload(sessions, pending.id).cleanup_server_id is None
    assert reload(sessions, built.id).cleanup_server_id == "srv-9"
    assert reload(sessions, done.id).state is S.ACTIVE


def test_reconciler_finds_idle_unfinished_requests_only(sessions):
    long_ago = utcnow() - timedelta(hours=1)
    with sessions() as session:
        idle = add_request(session, S.BUILDING, name="idle")
        busy = add_request(session, S.BUILDING, name="busy")
        finished = add_request(session, S.ACTIVE, name="finished")
        leftover = add_request(session, S.FAILED, name="leftover")
        leftover.cleanup_server_id = "srv-x"
        for request in (idle, finished, leftover):
            request.updated_at = long_ago
        session.commit()
        found = set(stalled_request_ids(session, idle_seconds=600))
    assert found == {idle.id, leftover.id}
    assert busy.id not in found


def idle_since(sessions, request_id, moment) -> None:
    with sessions() as session:
        session.get(ServerRequest, request_id).updated_at = moment
        session.commit()


def test_the_reconciler_ends_a_request_it_keeps_restarting_in_vain(sessions):
    with sessions() as session:
        request = add_request(session, S.BUILDING)
        request.job_id = "job-stuck"
        session.commit()
    for _restart in range(3):
        idle_since(sessions, request.id, utcnow() - timedelta(hours=1))
        dispatch(sessions, [request.id], idle_before=utcnow(), max_restarts=2)

    stored = reload(sessions, request.id)
    assert stored.state is S.FAILED and stored.failed_step is Step.POLL_CREATE
    assert stored.last_error_code == "ORCH.STALLED"
    assert "after 2 restarts" in stored.last_error_message


def test_the_reconciler_gives_up_a_cleanup_it_keeps_restarting_and_names_the_server(sessions):
    with sessions() as session:
        request = add_request(session, S.CANCELLED)
        request.cleanup_server_id = "srv-left"
        session.commit()
    for _restart in range(2):
        idle_since(sessions, request.id, utcnow() - timedelta(hours=1))
        dispatch(sessions, [request.id], idle_before=utcnow(), max_restarts=1)

    stored = reload(sessions, request.id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id is None
    assert "srv-left" in stored.last_error_message
    with sessions() as session:
        assert request.id not in stalled_request_ids(session, idle_seconds=0)


def test_the_reconciler_leaves_a_request_that_moved_after_it_was_found_idle(sessions):
    with sessions() as session:
        request = add_request(session, S.BUILDING)
        request.job_id = "job-1"
        session.commit()
    found_idle_at = utcnow() - timedelta(minutes=10)  # it moved since (created just now)
    fence = reload(sessions, request.id).fence

    assert dispatch(sessions, [request.id], idle_before=found_idle_at, max_restarts=5) == 0

    stored = reload(sessions, request.id)
    assert (stored.fence, stored.restarts) == (fence, 0)


def test_a_hand_off_starts_the_restart_count_again(sessions):
    with sessions() as session:
        request = add_request(session, S.BUILDING)
        request.job_id = "job-1"
        session.commit()
    idle_since(sessions, request.id, utcnow() - timedelta(hours=1))
    dispatch(sessions, [request.id], idle_before=utcnow(), max_restarts=5)
    assert reload(sessions, request.id).restarts == 1
    with sessions() as session:
        advance(session.get(ServerRequest, request.id))
        session.commit()
    assert reload(sessions, request.id).restarts == 0
