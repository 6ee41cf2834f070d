"""Step 3: attach the request's volumes, one at a time, in order (the API has no batch attach).

An attach is recorded as an intent on its row before the POST. A run that finds an intent but
no job id (the answer was lost, or a second copy of the step is running) looks at the disk
before attaching again: the disk's own status is the truth, because a server's attachment list
shows a disk from the moment an attach starts, even one that goes on to fail. So:

- ``in-use`` on this server: attached (done);
- ``attaching``: an attach is running; wait for it, up to the attach deadline;
- ``available``: the earlier attach never happened or failed; attach again.

An attempt is counted only for a call the cloud may have acted on (a job it accepted, a refusal,
a call whose answer was lost), and the budget is checked before the call.

One run goes as far as it can without waiting (issue 11: a message per hop cost two task runs
and four transactions per volume). The step holds an attach slot before it touches the row
(``capacity_first``: a run that must wait for quota costs no transaction). After each POST it
asks for the job once, at once (one call of the ``job`` class, no transaction): a job already
done is recorded as attached in the transaction that records the job, and, when a slot for the
next volume is free (taken before that transaction), the same transaction records the next
volume's intent and the run goes on to its POST. A job still running is handed to
``bms.poll_attach_job`` as before, which goes on to the next volume the same way. Volumes are
still attached one at a time, in order, each behind its intent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, func, literal, select, update
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from bms.exceptions import (
    BadRequest,
    CloudError,
    CloudTransportError,
    Conflict,
    ServerError,
    Throttled,
)
from bms.jobs import Job, JobOutcome
from models.base import as_utc, utcnow
from models.db import session_scope
from models.records import (
    AttachmentState,
    CloudJob,
    JobKind,
    ServerRequest,
    VolumeAttachment,
    transition,
)
from models.states import RequestState, Step
from tasks.base import Chain, Next, Wait, advance, claim, fail, handoff, spread, step_task
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.finish import at_once
from tasks.timing import DEADLINES, first_poll
from worker.limiter import NoCapacity
from worker.runtime import runtime

S = RequestState
A = AttachmentState

#: Refusals of an attach that say "not now" rather than "never": the server is busy, the disk
#: is still in use by an attach or detach that is ending.
REFUSALS_WORTH_RETRYING = frozenset({"BMS.1001", "BMS.0103"})


def _due(request: ServerRequest):
    """The attachment to work on: the first one not attached (the caller hands a request whose
    attachment has a job to the poll)."""
    return next((a for a in request.attachments if a.state is not A.ATTACHED), None)


@dataclass
class Target:
    """One attach to make: the attachment's position and what the POST needs; ``more``: other
    volumes wait behind it (so a slot for the next one is worth taking)."""

    position: int
    server_id: str
    volume_id: str
    device: str | None
    more: bool


def _target(request: ServerRequest, attachment) -> Target:
    more = any(a.state is not A.ATTACHED and a is not attachment for a in request.attachments)
    position, volume_id, device = attachment.position, attachment.volume_id, attachment.device
    return Target(position, request.server_id, volume_id, device, more)


@dataclass
class Then:
    """The next volume's intent is committed: its POST is made in this run, under ``held``."""

    target: Target
    #: The limiter's hold on an attach slot for that POST (closed once the POST is answered).
    held: ExitStack


#: Returned instead of a hand-off when another message carries the chain on: a second copy of
#: the step recorded or settled this attach, or the request is no longer this message's. This
#: run sends nothing.
ANOTHER_COPY_GOES_ON = None

#: What a POST's answer, once recorded, leads to: a hand-off (``Next``; ``Next(None)`` when the
#: chain ends), the next volume's POST in this same run (``Then``), or ``ANOTHER_COPY_GOES_ON``.
Recorded = Next | Then | None


@dataclass
class Slot:
    """An attach slot asked for the next volume's POST: the limiter's hold on it (``held``),
    or, when none was free, how long to wait for one (``wait``)."""

    held: ExitStack | None
    wait: float = 0.0

    def close(self) -> None:
        if self.held is not None:
            self.held.close()  # a slot not spent goes back to the window


def take_slot() -> Slot:
    """An attach slot for the next volume's POST, taken before its intent is written, so that a
    run that finds none hands the request on without writing an intent it must undo."""
    stack = ExitStack()
    try:
        stack.enter_context(runtime().limiter.hold("attach"))
    except NoCapacity as exc:
        return Slot(None, spread(exc.wait_seconds, exc.window_seconds))
    return Slot(stack)


def with_next_slot(wanted: bool, record: Callable[[Slot | None], Recorded]) -> Recorded:
    """``record(slot)``, with a slot for the next volume's POST when ``wanted`` (taken first:
    see :func:`take_slot`). The slot goes back to the window once ``record`` is done, unless
    the run goes on to that POST with it (``Then``)."""
    slot = take_slot() if wanted else None
    outcome = None
    try:
        outcome = record(slot)
    finally:
        if slot is not None and not isinstance(outcome, Then):
            slot.close()
    return outcome


@step_task("bms.attach_volume", Step.ATTACH, capacity_first=True)
def attach_volume(chain: Chain) -> Next | None:
    target = _fresh_intent(chain)
    if target is not None:
        return attach_from(chain, target)
    with claim(chain, attachments=True) as (session, request):
        attachment = _due(request)
        if request.state is not S.ATTACHING or attachment is None or attachment.job_id:
            return handoff(request)
        in_cloud_maybe = attachment.intent_at is not None
        if not in_cloud_maybe:
            if attachment.attempt >= runtime().settings.max_attempts:
                return _out_of_attempts(session, request, attachment)
            attachment.state, attachment.intent_at = A.ATTACHING, utcnow()
        target = _target(request, attachment)
    if in_cloud_maybe:
        settled = _look_at_disk(chain, target, attach_next=True)
        if settled is not None:
            return settled
    return attach_from(chain, target)


def _fresh_intent(chain: Chain) -> Target | None:
    """The usual run, in one statement: when the request is this message's and ATTACHING, and
    its first volume not attached is untouched (no intent, no job, attempts left), that volume's
    intent is written and what its POST needs is returned. ``None``: anything else (nothing
    written), which the claim that follows sorts out.

    As safe as the claim: the intent is written by a conditional UPDATE of the volume's row, so
    of two copies of the message, the second waits on the first's row lock and then finds the
    intent (PostgreSQL re-checks the condition on the row it waited for; SQLite writes one
    transaction at a time).
    """
    request_id = uuid.UUID(chain.request_id)
    V, R, other = VolumeAttachment, ServerRequest, aliased(VolumeAttachment)
    due = (
        select(V.id)
        .where(V.request_id == request_id, V.state != A.ATTACHED)
        .order_by(V.position)
        .limit(1)
        .scalar_subquery()
    )
    owned = (
        select(R.id).where(R.id == request_id, R.fence == chain.fence, R.state == S.ATTACHING)
    ).exists()
    server_id = select(R.server_id).where(R.id == request_id).scalar_subquery()
    unattached = (
        select(func.count())
        .select_from(other)
        .where(other.request_id == request_id, other.state != A.ATTACHED)
        .scalar_subquery()
    )
    statement = (
        update(V)
        .where(V.id == due, V.state == A.PENDING, V.intent_at.is_(None), V.job_id.is_(None))
        .where(V.attempt < runtime().settings.max_attempts, owned)
        .values(state=A.ATTACHING, intent_at=utcnow())
        .returning(V.position, V.volume_id, V.device, server_id, unattached)
        .execution_options(synchronize_session=False)
    )
    with session_scope(runtime().sessions) as session:
        row = session.execute(statement).one_or_none()
    if row is None:
        return None
    position, volume_id, device, server, left = row
    return Target(position, server, volume_id, device, more=left > 1)


def attach_from(chain: Chain, target: Target, held: ExitStack | None = None) -> Next | None:
    """POST the attach of ``target`` (its intent committed), then of each next volume as long as
    each job is done at once and a slot for the next is free; ``held``: a slot held for the
    first POST (else the step's own, or one taken by the client)."""
    while True:
        outcome = _post_attach(chain, target, held)
        if not isinstance(outcome, Then):
            return outcome
        target, held = outcome.target, outcome.held


def _post_attach(chain: Chain, target: Target, held: ExitStack | None) -> Recorded:
    position = target.position
    try:
        # The slot is given up (spent, or back to the window) as soon as the POST is answered.
        with held or nullcontext():
            job_id = runtime().client.attach_volume(
                target.server_id, target.volume_id, target.device
            )
    except (NoCapacity, Throttled):
        _not_sent(chain, position)  # held back by a quota: no attempt spent
        raise
    except CloudTransportError as exc:
        if exc.outcome_unknown:
            _count_attempt(chain, position)  # intent kept: the re-run looks at the disk first
        else:
            _not_sent(chain, position)
        raise
    except ServerError:
        raise  # intent kept, no attempt counted: the re-run looks at the disk first
    except (BadRequest, Conflict) as exc:
        return _refused(chain, target, exc)
    job = _peek(job_id)
    done = job is not None and job.outcome is JobOutcome.DONE
    return with_next_slot(
        done and target.more, lambda slot: _record_job(chain, position, job_id, job, slot)
    )


def _peek(job_id: str) -> Job | None:
    """The job asked for once, right after the POST that started it; ``None`` when the answer
    did not come (the poll step asks again: nothing is lost)."""
    try:
        return runtime().client.show_job(job_id)
    except Throttled as exc:
        runtime().limiter.back_off(exc.api_class or "job", exc.retry_after)
    except (NoCapacity, CloudError):
        pass
    return None


def record_cloud_job(session, request: ServerRequest, job_id: str, job: Job | None) -> CloudJob:
    """The job's row, with what the poll in hand saw of it."""
    cloud_job = CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.ATTACH)
    if job is not None:
        cloud_job.status, cloud_job.polls = job.status, 1
        cloud_job.begin_time, cloud_job.end_time = job.begin_time, job.end_time
        if job.failures:
            failure = job.failures[0]
            cloud_job.error_code, cloud_job.fail_reason = failure.error_code, failure.fail_reason
    session.add(cloud_job)
    return cloud_job


def _record_job(
    chain: Chain, position: int, job_id: str, job: Job | None, slot: Slot | None
) -> Recorded:
    """Record the job the POST started, and what ``job`` (the one look at it, if answered)
    says of it."""
    # Recorded whatever the token, as a create is: the cloud started this job.
    with claim(chain, owned=False, attachments=True) as (session, request):
        record_cloud_job(session, request, job_id, job)
        attachment = request.attachments[position]
        if attachment.state is not A.ATTACHING or attachment.job_id:
            return ANOTHER_COPY_GOES_ON  # it recorded or settled this attach
        attachment.job_id, attachment.intent_at = job_id, None
        attachment.attempt += 1
        if not chain.owns(request):
            return ANOTHER_COPY_GOES_ON  # the request is another message's now
        return _job_seen(session, request, attachment, job, slot)


def _job_seen(session, request, attachment, job: Job | None, slot: Slot | None) -> Next | Then:
    """What the look at the job right after its POST tells (this message owns the request)."""
    if job is None or job.outcome is JobOutcome.RUNNING or request.state is not S.ATTACHING:
        # Handed on, after a poll's interval, to what the row names next: the job's poll when
        # the look got no answer (the poll asks again) or the job still runs; when the request
        # was cancelled during the call (no longer ATTACHING), its cleanup, whatever the job
        # did (the server is deleted, volumes and all).
        return handoff(request, first_poll(JobKind.ATTACH))
    if job.outcome is JobOutcome.DONE:
        return attach_done(session, request, attachment, slot)
    first = job.failures[0]
    reason = first.fail_reason or "failed"
    return attach_failed(session, request, attachment, first.error_code, reason)


def attach_done(session, request: ServerRequest, attachment, slot: Slot | None) -> Next | Then:
    """The attach job of ``attachment`` is done. The next volume goes on in this run when
    ``slot`` holds one for its POST (its intent written here); else a message attaches it
    (after the wait for a slot, when none was free)."""
    attachment.state, attachment.job_id = A.ATTACHED, None
    following = _due(request)
    if following is None:
        transition(session, request, S.TAGGING, detail="volumes attached")
        return at_once(request)
    fresh = following.state is A.PENDING and following.intent_at is None
    if slot is None or slot.held is None or not fresh:
        return handoff(request, slot.wait if slot is not None and slot.wait else None)
    if following.attempt >= runtime().settings.max_attempts:
        return _out_of_attempts(session, request, following)
    _attached_then_intent(session, attachment, following)
    return Then(_target(request, following), held=slot.held)


def _attached_then_intent(session, attached, following) -> None:
    """``attached`` attached (its attempt as counted) and ``following``'s intent, in one UPDATE
    of both rows (issue 11: a statement a volume less than the ORM's flush, one per row)."""
    done = {"state": A.ATTACHED, "job_id": None, "intent_at": None, "attempt": attached.attempt}
    intent = {"state": A.ATTACHING, "intent_at": utcnow()}
    _write_rows(session, {attached: done, following: intent})


def _write_rows(session, values_of: dict[VolumeAttachment, dict]) -> None:
    """Write each row's values in one UPDATE (a CASE on the row's id per column), then tell the
    session the rows hold them, so that its flush does not write them again (a change the
    session holds that is not in ``values_of`` is flushed as usual)."""
    V, columns, now = VolumeAttachment, VolumeAttachment.__table__.c, utcnow()
    values_of = {row: {**values, "updated_at": now} for row, values in values_of.items()}
    keys = sorted({key for values in values_of.values() for key in values})

    def column_value(key: str):
        whens = {
            row.id: literal(values[key], columns[key].type)
            for row, values in values_of.items()
            if key in values
        }
        return case(whens, value=V.id, else_=columns[key])

    statement = (
        update(V)
        .where(V.id.in_([row.id for row in values_of]))
        .values({key: column_value(key) for key in keys})
        .execution_options(synchronize_session=False)
    )
    with session.no_autoflush:  # the rows' changes go in this statement, not in a flush first
        session.execute(statement)
    for row, values in values_of.items():
        for key, value in values.items():
            set_committed_value(row, key, value)


def _look_at_disk(chain: Chain, target: Target, attach_next: bool = False) -> Next | None:
    """After a lost answer: settle the attachment from the disk's status, or ``None`` to attach.

    ``attach_next``: a free disk is attached again at once, so the budget is checked here.
    """
    position, server_id, volume_id = target.position, target.server_id, target.volume_id
    volume = runtime().client.resources.show_volume(volume_id)
    status = volume.get("status")
    here = any(a.get("server_id") == server_id for a in volume.get("attachments") or [])
    wait, progress = None, True
    with claim(chain, attachments=True) as (session, request):
        attachment = request.attachments[position]
        if request.state is not S.ATTACHING or attachment.intent_at is None:
            return handoff(request)
        if status == "in-use" and here:
            return _attached(session, request, attachment, "found attached")
        if status == "attaching" and here:
            started = as_utc(attachment.intent_at)
            if utcnow() - started > timedelta(seconds=DEADLINES[JobKind.ATTACH]):
                attachment.intent_at = None
                return _attach_refused(session, request, attachment, TIMEOUT_CODE, "never settled")
            wait = first_poll(JobKind.ATTACH)
            advance(request)
        elif status == "available" and _recent(attachment.intent_at):
            # Another copy's POST may still be on its way to the cloud: give it time to show.
            wait, progress = first_poll(JobKind.ATTACH), False
            advance(request)
        elif status == "available":
            if attach_next and attachment.attempt >= runtime().settings.max_attempts:
                attachment.intent_at = None
                return _out_of_attempts(session, request, attachment)
            attachment.intent_at = utcnow()  # the new POST's intent
            return None
        else:
            attachment.intent_at = None
            reason = f"is {status}" + ("" if here else " on another server")
            return _attach_refused(session, request, attachment, "BMS.0103", reason)
    raise Wait(wait, "an attach of this disk may be running", progress=progress)


def _recent(intent_at) -> bool:
    """Whether an attach intent is younger than the look-up grace (its POST may be in flight)."""
    grace = timedelta(seconds=runtime().settings.create_lookup_grace_seconds)
    return utcnow() - as_utc(intent_at) < grace


def _attached(session, request: ServerRequest, attachment, how: str) -> Next:
    attachment.state, attachment.job_id, attachment.intent_at = A.ATTACHED, None, None
    if all(a.state is A.ATTACHED for a in request.attachments):
        transition(session, request, S.TAGGING, detail=f"volumes attached ({how})")
    return at_once(request)


def _not_sent(chain: Chain, position: int) -> None:
    """The attach never reached the cloud: no intent left behind."""
    with claim(chain, attachments=True) as (_session, request):
        attachment = request.attachments[position]
        if attachment.state is A.ATTACHING and not attachment.job_id:
            attachment.state, attachment.intent_at = A.PENDING, None


def _count_attempt(chain: Chain, position: int) -> None:
    with claim(chain, attachments=True) as (_session, request):
        request.attachments[position].attempt += 1


def _refused(chain: Chain, target: Target, exc: BadRequest | Conflict) -> Next:
    """The cloud said no. The disk tells whether the refusal was our own earlier attach."""
    position = target.position
    with claim(chain, attachments=True) as (_session, request):
        attachment = request.attachments[position]
        attachment.attempt += 1
        request.last_error_code = exc.error_code
        request.last_error_message = f"volume {attachment.volume_id}: {exc.message or exc}"
    settled = _look_at_disk(chain, target)
    if settled is not None:
        return settled
    # The disk is free: the refusal was about something else (the server busy, a bad device).
    wait = None
    with claim(chain, attachments=True) as (session, request):
        attachment = request.attachments[position]
        worth_again = is_retryable(exc.error_code, from_job=False) or exc.error_code in (
            REFUSALS_WORTH_RETRYING
        )
        if not worth_again or attachment.attempt >= runtime().settings.max_attempts:
            attachment.intent_at = None
            return _attach_refused(session, request, attachment, exc.error_code, exc.message or "")
        wait = first_poll(JobKind.ATTACH)
        advance(request)
    raise Wait(wait, f"attach refused: {exc.error_code}", progress=False)


def attach_failed(session, request, attachment, code: str | None, reason: str) -> Next:
    """A failed attach job retries that attach only; out of attempts the request FAILS."""
    attachment.job_id = None
    request.last_error_code, request.last_error_message = code, reason
    if attachment.attempt < runtime().settings.max_attempts and code != TIMEOUT_CODE:
        attachment.state = A.PENDING
        return handoff(request, countdown=first_poll(JobKind.ATTACH))
    attachment.state = A.FAILED
    fail(session, request, Step.ATTACH, code, f"volume {attachment.volume_id}: {reason}")
    return Next(None)


def _attach_refused(session, request: ServerRequest, attachment, code, reason: str) -> Next:
    attachment.state, attachment.job_id = A.FAILED, None
    message = f"volume {attachment.volume_id}: {reason}"
    fail(session, request, Step.ATTACH, code, message)
    return Next(None)


def _out_of_attempts(session, request: ServerRequest, attachment) -> Next:
    code = request.last_error_code or "ORCH.ATTEMPTS"
    return _attach_refused(session, request, attachment, code, "no attach attempt left")
