"""The attach step's body with a scripted cloud: lost answers, refusals, budgets, duplicates."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import event

from bms.exceptions import BadRequest, CloudConnectionError, ServerError
from models.records import AttachmentState
from models.states import RequestState, Step
from tasks.attach import attach_volume
from tasks.base import StaleChain, Wait
from tasks.control import retry
from tests.tasks.stepkit import job, next_task, volume
from tests.tasks.test_base import statements_of

S = RequestState
A = AttachmentState
DROPPED = CloudConnectionError("dropped", "POST", "/attachvolume")


def attaching(bench, volumes: int = 1) -> object:
    # The step asks for its job once after the POST: here still running, so the poll takes it.
    bench.client.on("show_job", job("RUNNING"))
    return bench.add(S.ATTACHING, server_id="srv-1", volumes=volumes)


def test_a_lost_answer_whose_job_then_fails_is_attached_again_not_marked_done(bench):
    request_id = attaching(bench)
    bench.client.on("attach_volume", DROPPED)
    with pytest.raises(CloudConnectionError):
        attach_volume(bench.chain(request_id))
    # The re-run: the disk shows the first attach still running (the list would show it too).
    bench.client.on("show_volume", volume("attaching"))
    with pytest.raises(Wait):
        attach_volume(bench.chain(request_id))
    assert bench.get(request_id).attachments[0].state is not A.ATTACHED
    # That attach failed in the cloud: the disk is free again, so it is attached anew.
    bench.client.on("show_volume", volume("available"))
    bench.client.on("attach_volume", "job-2")

    outcome = attach_volume(bench.chain(request_id))

    attachment = bench.get(request_id).attachments[0]
    assert (attachment.state, attachment.job_id) == (A.ATTACHING, "job-2")
    assert next_task(outcome) == "bms.poll_attach_job"
    assert attachment.attempt == 2  # the lost call may have acted, and the new one did


def test_a_refusal_while_our_own_attach_runs_waits_instead_of_marking_it_done(bench):
    request_id = attaching(bench)
    bench.client.on("attach_volume", BadRequest(400, "BMS.0103", "The volume vol-1 is attaching."))
    bench.client.on("show_volume", volume("attaching"))

    with pytest.raises(Wait):
        attach_volume(bench.chain(request_id))

    assert bench.get(request_id).attachments[0].state is not A.ATTACHED


def test_a_disk_in_use_on_our_server_after_a_lost_answer_is_attached(bench):
    request_id = attaching(bench)
    bench.client.on("attach_volume", DROPPED)
    with pytest.raises(CloudConnectionError):
        attach_volume(bench.chain(request_id))
    bench.client.on("show_volume", volume("in-use"))

    outcome = attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.attachments[0].state is A.ATTACHED and stored.state is S.TAGGING
    assert next_task(outcome) == "bms.apply_tags"
    assert bench.client.count("attach_volume") == 1


def test_a_disk_in_use_elsewhere_fails_at_once_with_the_reason(bench):
    request_id = attaching(bench)
    bench.client.on("attach_volume", BadRequest(400, "BMS.0103", "The volume vol-1 is in-use."))
    bench.client.on("show_volume", volume("in-use", server_id="someone-else"))

    attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.FAILED and stored.failed_step is Step.ATTACH
    assert "in-use on another server" in stored.last_error_message
    assert bench.client.count("attach_volume") == 1


def test_a_5xx_spends_no_attempt_and_the_budget_is_checked_before_the_call(bench):
    request_id = attaching(bench)
    bench.client.on("attach_volume", ServerError(500, "BMS.9999", "boom"))
    with pytest.raises(ServerError):
        attach_volume(bench.chain(request_id))
    assert bench.get(request_id).attachments[0].attempt == 0

    request_id = attaching(bench)
    with bench.sessions() as session:
        from models.records import VolumeAttachment

        attachment = session.query(VolumeAttachment).filter_by(request_id=request_id).one()
        attachment.attempt = 3
        session.commit()
    attach_volume(bench.chain(request_id))

    assert bench.get(request_id).state is S.FAILED
    assert bench.client.count("attach_volume") == 1  # only the first request's call


def test_two_copies_of_the_step_send_one_attach(bench):
    request_id = attaching(bench)
    second_copy = bench.chain(request_id)

    def the_other_copy_runs_meanwhile(*_args):
        with pytest.raises(Wait):
            attach_volume(second_copy)  # sees the intent, looks at the disk, does not POST
        return "job-1"

    bench.client.on("attach_volume", the_other_copy_runs_meanwhile)
    bench.client.on("show_volume", volume("attaching"))

    attach_volume(bench.chain(request_id))

    assert bench.client.count("attach_volume") == 1
    assert bench.get(request_id).attachments[0].job_id == "job-1"


def test_a_cancel_during_the_attach_post_hands_the_request_to_cleanup(bench):
    request_id = attaching(bench)
    cancels = bench.cancel_during(request_id, "job-1")
    bench.client.on("attach_volume", cancels)

    outcome = attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id == "srv-1"
    assert next_task(outcome) == "bms.delete_server"


def test_a_redelivered_attach_after_its_hand_off_does_nothing(bench):
    request_id = attaching(bench)
    message = bench.chain(request_id)
    bench.client.on("attach_volume", "job-1")
    attach_volume(bench.chain(request_id))

    with pytest.raises(StaleChain):
        attach_volume(message)
    assert bench.client.count("attach_volume") == 1


def test_lost_answers_on_a_free_disk_never_send_more_attaches_than_the_budget(bench):
    # Every POST's answer is lost and the disk stays free: each re-run looks at the disk, finds
    # it available and attaches again. The budget (3) must hold on that path too.
    request_id = attaching(bench)
    bench.client.on("attach_volume", DROPPED)
    bench.client.on("show_volume", volume("available"))

    for _run in range(6):
        try:
            attach_volume(bench.chain(request_id))
        except CloudConnectionError:
            continue
        break

    stored = bench.get(request_id)
    assert bench.client.count("attach_volume") == 3  # before: 6, attempt 6
    assert stored.attachments[0].attempt == 3
    assert stored.state is S.FAILED and stored.failed_step is Step.ATTACH


def test_a_second_copy_does_not_attach_while_the_first_copys_post_is_in_flight(bench):
    # Copy B runs while copy A's POST has not reached the cloud yet: the disk still shows
    # available. B must not send a second attach of the same volume under the same token.
    bench.settings.create_lookup_grace_seconds = 60
    request_id = attaching(bench)
    second_copy = bench.chain(request_id)

    def the_other_copy_runs_first(*_args):
        bench.client.on("attach_volume", "job-1")
        with pytest.raises(Wait):
            attach_volume(second_copy)  # sees A's intent, looks at the disk: available, waits
        return "job-0"

    bench.client.on("attach_volume", the_other_copy_runs_first)
    bench.client.on("show_volume", volume("available"))

    attach_volume(bench.chain(request_id))

    assert bench.client.count("attach_volume") == 1  # today: 2


def test_a_retry_gives_an_attach_left_in_flight_a_fresh_budget(bench):
    # The request FAILED while an attach whose answers were lost was still unsettled (its
    # budget spent): the operator's retry is a fresh budget for that volume too.
    request_id = attaching(bench)
    bench.client.on("attach_volume", DROPPED)
    bench.client.on("show_volume", volume("available"))
    for _run in range(3):
        with pytest.raises(CloudConnectionError):
            attach_volume(bench.chain(request_id))
    bench.client.on("show_volume", CloudConnectionError("dropped", "GET", "/volume"))
    attach_volume.task(
        request_id=str(request_id), fence=bench.get(request_id).fence, transient_errors=6
    )
    assert bench.get(request_id).state is S.FAILED

    retry(bench.sessions, [request_id])
    bench.client.on("show_volume", volume("available"))
    bench.client.on("attach_volume", "job-9")
    attach_volume(bench.chain(request_id))

    assert bench.get(request_id).attachments[0].job_id == "job-9"


# --- one run goes on to the next volume (issue 11) -------------------------------------------


def test_jobs_done_at_once_attach_every_volume_in_one_run(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1", "job-2")
    bench.client.on("show_job", job("SUCCESS"))

    outcome = attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert [a.state for a in stored.attachments] == [A.ATTACHED, A.ATTACHED]
    assert [a.attempt for a in stored.attachments] == [1, 1]
    assert stored.state is S.TAGGING
    assert next_task(outcome) == "bms.apply_tags"  # before: poll, attach, poll: three messages
    # One after the other, in order; the second POST's slot taken before its intent.
    attached = [args[1] for name, args in bench.client.calls if name == "attach_volume"]
    assert attached == ["vol-1", "vol-2"]
    assert bench.limiter.holds == [("attach", None)]


def statement_kinds(statements: list[str]) -> Counter[str]:
    """Each statement as its verb and table ("SELECT server_requests"), SQLite's BEGIN left out."""
    kinds: Counter[str] = Counter()
    for statement in statements:
        words = statement.split()
        if words[0] == "SELECT":
            kinds[f"SELECT {words[words.index('FROM') + 1]}"] += 1
        elif words[0] == "INSERT":
            kinds[f"INSERT {words[2]}"] += 1
        elif words[0] == "UPDATE":
            kinds[f"UPDATE {words[1]}"] += 1
    return kinds


def test_two_volumes_whose_jobs_end_at_once_take_nine_statements(bench):
    # Issue 11 (SQL statements per server with 2 volumes <= 25): before, 12. Each record's claim
    # read the attachments in a SELECT of their own, and the volume attached and the next one's
    # intent were two UPDATEs.
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1", "job-2")
    bench.client.on("show_job", job("SUCCESS"))
    message = bench.chain(request_id)

    with statements_of(bench) as statements:
        attach_volume(message)

    assert statement_kinds(statements) == {
        "UPDATE volume_attachments": 3,  # first intent; attached + next intent; last attached
        "SELECT server_requests": 2,  # each record's claim, the attachments locked and joined
        "INSERT cloud_jobs": 2,  # the job rows the dashboard lists
        "INSERT events": 1,  # ATTACHING -> TAGGING
        "UPDATE server_requests": 1,
    }
    stored = bench.get(request_id)
    assert [(a.state, a.attempt, a.job_id, a.intent_at) for a in stored.attachments] == [
        (A.ATTACHED, 1, None, None), (A.ATTACHED, 1, None, None),
    ]  # fmt: skip
    assert stored.attachments[1].updated_at >= stored.attachments[0].updated_at
    assert [e[1] for e in bench.events(request_id)][-1] == "TAGGING"


def test_no_slot_for_the_next_volume_leaves_it_to_a_message_without_an_intent(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1")
    bench.client.on("show_job", job("SUCCESS"))
    bench.limiter.denied = 3.0

    outcome = attach_volume(bench.chain(request_id))

    first, second = bench.get(request_id).attachments
    assert first.state is A.ATTACHED
    assert (second.state, second.intent_at, second.attempt) == (A.PENDING, None, 0)
    assert next_task(outcome) == "bms.attach_volume"
    assert outcome.signature.options["countdown"] >= 3.0  # when a slot frees, spread
    assert bench.client.count("attach_volume") == 1


def test_a_job_still_running_after_the_post_is_polled_by_a_message(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1")

    outcome = attach_volume(bench.chain(request_id))

    first, second = bench.get(request_id).attachments
    assert (first.state, first.job_id) == (A.ATTACHING, "job-1")
    assert second.state is A.PENDING
    assert next_task(outcome) == "bms.poll_attach_job"
    assert bench.limiter.holds == []  # no slot taken for a volume that must wait anyway


def test_a_job_failed_at_once_is_attached_again_by_a_message_with_its_attempt_counted(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1")
    bench.client.on("show_job", job("FAIL", code="BMS.1004"))

    outcome = attach_volume(bench.chain(request_id))

    first, second = bench.get(request_id).attachments
    assert (first.state, first.job_id, first.attempt) == (A.PENDING, None, 1)
    assert second.state is A.PENDING
    assert next_task(outcome) == "bms.attach_volume"
    assert bench.get(request_id).last_error_code == "BMS.1004"


def test_an_unanswered_job_poll_after_the_post_leaves_the_job_to_the_poll_step(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1")
    bench.client.on("show_job", ServerError(503, "APIGW.0503", "busy"))

    outcome = attach_volume(bench.chain(request_id))

    assert bench.get(request_id).attachments[0].job_id == "job-1"
    assert next_task(outcome) == "bms.poll_attach_job"


def test_a_cancel_between_two_volumes_stops_the_run_and_hands_over_to_cleanup(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1")
    bench.client.on("show_job", bench.cancel_during(request_id, job("SUCCESS")))

    outcome = attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id == "srv-1"
    assert stored.attachments[0].job_id == "job-1"  # the job the cloud started is recorded
    assert next_task(outcome) == "bms.delete_server"
    assert bench.client.count("attach_volume") == 1


class Killed(BaseException):
    """The worker process dies here (nothing after it runs, nothing catches it)."""


def test_a_kill_between_the_second_post_and_its_commit_is_settled_from_the_disk(bench):
    request_id = attaching(bench, volumes=2)
    bench.client.on("attach_volume", "job-1", "job-2")
    bench.client.on("show_job", job("SUCCESS"), Killed())
    message = bench.chain(request_id)
    with pytest.raises(Killed):
        attach_volume(message)
    first, second = bench.get(request_id).attachments
    assert first.state is A.ATTACHED
    assert second.state is A.ATTACHING and second.intent_at and not second.job_id

    # The message is redelivered (same token: the run handed nothing off): the disk says done.
    bench.client.on("show_volume", volume("in-use"))
    outcome = attach_volume(message)

    assert bench.get(request_id).state is S.TAGGING
    assert next_task(outcome) == "bms.apply_tags"
    assert bench.client.count("attach_volume") == 2  # no second attach of either volume


def test_a_redelivered_message_after_a_run_that_attached_every_volume_attaches_nothing(bench):
    request_id = attaching(bench, volumes=2)
    message = bench.chain(request_id)
    bench.client.on("attach_volume", "job-1", "job-2")
    bench.client.on("show_job", job("SUCCESS"))
    attach_volume(bench.chain(request_id))

    # The run keeps its token for the tagging stage it does at once (tasks.finish.at_once),
    # here never done: its message, delivered again, sends the stage's first step.
    outcome = attach_volume(message)
    assert next_task(outcome) == "bms.apply_tags"
    assert bench.client.count("attach_volume") == 2


def test_a_volume_out_of_attempts_fails_the_request_before_its_post(bench):
    request_id = attaching(bench, volumes=2)
    with bench.sessions() as session:
        from models.records import VolumeAttachment

        second = session.query(VolumeAttachment).filter_by(request_id=request_id, position=1)
        second.one().attempt = 3
        session.commit()
    bench.client.on("attach_volume", "job-1")
    bench.client.on("show_job", job("SUCCESS"))

    attach_volume(bench.chain(request_id))

    stored = bench.get(request_id)
    assert stored.state is S.FAILED and stored.failed_step is Step.ATTACH
    assert bench.client.count("attach_volume") == 1


def test_a_fresh_attach_writes_its_intent_in_one_statement_before_its_post(bench):
    # The usual first run: one conditional UPDATE (before: a locked SELECT of the request, a
    # SELECT of its attachments and the UPDATE).
    request_id = attaching(bench)
    engine = bench.sessions.kw["bind"]
    statements = []

    def count(_conn, _cursor, statement, *_args, **_kwargs):
        if not statement.startswith("BEGIN"):  # SQLite's explicit BEGIN IMMEDIATE
            statements.append(statement)

    def answer(*_args):
        stored = bench.get(request_id).attachments[0]
        assert stored.state is A.ATTACHING and stored.intent_at is not None  # before the call
        return "job-1"

    message = bench.chain(request_id)
    event.listen(engine, "before_cursor_execute", count)
    try:
        seen_before_post = []
        bench.client.on(
            "attach_volume", lambda *args: (seen_before_post.append(len(statements)), answer())[1]
        )
        attach_volume(message)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen_before_post == [1]


def test_a_cancelled_request_gets_no_intent_from_the_one_statement_path(bench):
    request_id = attaching(bench)
    from tasks.control import cancel

    cancel(bench.sessions, [request_id])

    outcome = attach_volume(bench.chain(request_id))

    assert bench.get(request_id).attachments[0].intent_at is None
    assert next_task(outcome) == "bms.delete_server"
    assert bench.client.count("attach_volume") == 0
