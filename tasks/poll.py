"""Step 2 (and 3b): watch asynchronous cloud jobs to their end, never sleeping in a worker.

A poll that finds the job running re-schedules itself with a growing delay; past the deadline of
its kind the job counts as failed. Every sub_job is checked: a create is done only when all are.
A failed create is classified from its code: retryable with attempts left goes back to CREATING
(the failed server deleted first), anything else is FAILED, keeping the step, code and message.

A done create goes on in the same run: to the tagging stage (``tasks.finish``), or, for a
plain request (no tag, no rename, no volume: its message says so), straight to ACTIVE in one
transaction after reading the server back.

Every wait ends: a job's deadline counts from its row's creation, an adopted server's from the
deadline stored on the request when its watch began. A request cancelled while its job ran is
handed to cleanup as soon as the poll comes back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, exists, update

from bms.exceptions import CloudError, NotFound, Throttled
from bms.jobs import Job, JobOutcome
from models.base import as_utc, utcnow
from models.db import session_scope
from models.outbox import add_event, batch_of
from models.records import (
    AttachmentState,
    CloudJob,
    JobKind,
    ServerRequest,
    StrayServer,
    VolumeAttachment,
    record_note,
    transition,
)
from models.states import RequestState, Step
from tasks.attach import Slot, Then, attach_done, attach_failed, attach_from, with_next_slot
from tasks.base import Chain, Next, Wait, advance, claim, fail, handoff, step_task
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.finish import Stage, at_once, stage_at_once
from tasks.plan import is_plain, step_signature
from tasks.timing import DEADLINES, create_backoff, first_poll, next_poll
from worker.limiter import NoCapacity
from worker.runtime import runtime

S = RequestState


@dataclass(frozen=True)
class _Seen:
    """What a poll needs of a job's row once its answer is stored: when it began, and how often
    it was polled."""

    kind: JobKind
    created_at: datetime
    polls: int


def _job_values(job: Job) -> dict:
    """What a poll stores of a job's answer in its row."""
    jobs = CloudJob.__table__
    values = {
        "status": job.status,
        "polls": jobs.c.polls + 1,
        "begin_time": job.begin_time,
        "end_time": job.end_time,
        "updated_at": utcnow(),
    }
    failure = job.failures[0] if job.failures else None
    if failure is not None:
        values |= {"error_code": failure.error_code, "fail_reason": failure.fail_reason}
    return values


def _record(session, request: ServerRequest, job_id: str, job: Job, kind: JobKind) -> _Seen:
    """Store what the poll saw (one UPDATE of the job's row), and mark the request as making
    progress."""
    jobs = CloudJob.__table__
    values = _job_values(job)
    seen = session.execute(
        update(jobs)
        .where(jobs.c.job_id == job_id)
        .values(values)
        .returning(jobs.c.kind, jobs.c.created_at, jobs.c.polls)
    ).one_or_none()
    if seen is None:
        # Not recorded (a row of an older release): its deadline counts from now.
        values |= {"polls": 1}
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=kind, **values))
        seen = (kind, utcnow(), 1)
    request.updated_at = utcnow()
    return _Seen(*seen)


def _posted_at(session, job_id: str):
    """When the call that started ``job_id`` was answered (its job row's creation), or now."""
    cloud_job = session.get(CloudJob, job_id)
    return cloud_job.created_at if cloud_job else utcnow()


def _still_running(cloud_job: _Seen) -> float | None:
    """Seconds until the next poll, or ``None`` when the job is past its deadline."""
    age = utcnow() - as_utc(cloud_job.created_at)
    if age > timedelta(seconds=DEADLINES[cloud_job.kind]):
        return None
    return next_poll(cloud_job.kind, cloud_job.polls)


def _watching(request: ServerRequest, job_id: str | None) -> bool:
    """The request still waits on its create job ``job_id`` (``None``: on any)."""
    return (
        request.state in (S.BUILDING, S.CANCELLED)
        and request.job_id is not None
        and (job_id is None or request.job_id == job_id)
    )


@step_task("bms.poll_create_job", Step.POLL_CREATE)
def poll_create_job(chain: Chain) -> Next | None:
    # The message names the job (a hand-off sends it, see tasks.plan): no transaction before
    # the call, the one after it checks that the row still waits on that job. A message
    # without it (sent by an earlier release) reads it from the row first.
    job_id = chain.job_id
    if job_id is None:
        with claim(chain) as (_session, request):
            if not _watching(request, None):
                return handoff(request)
            job_id = request.job_id
    try:
        job = runtime().client.show_job(job_id)
    except NotFound:
        return _job_forgotten(chain, job_id)
    if job.outcome is JobOutcome.DONE and job.server_ids:
        if chain.plain and _ready_at_once(chain, job_id, job):
            return Next(None)
        done = _create_done_at_once(chain, job_id, job)
        if done is not None:
            return done
    wait = None
    with claim(chain) as (session, request):
        if not _watching(request, job_id):
            return handoff(request)
        cloud_job = _record(session, request, job_id, job, JobKind.CREATE)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                failure = _CreateFailure(job.server_ids, TIMEOUT_CODE, "create job timed out")
                return _create_failed(session, request, failure)
            advance(request)
        elif job.outcome is JobOutcome.DONE:
            if not job.server_ids:
                failure = _CreateFailure([], "ORCH.NO_SERVER", f"job {job_id} named no server")
                return _create_failed(session, request, failure)
            return _create_done(session, request, job.server_ids[0])
        else:
            first = job.failures[0]
            reason = first.fail_reason or f"create job {job_id} failed"
            failure = _CreateFailure(job.server_ids, first.error_code, reason)
            return _create_failed(session, request, failure)
    raise Wait(wait, "create job running")


_R = ServerRequest.__table__.c
_JOBS = CloudJob.__table__
#: The usual end of a create's UPDATE (see :func:`_create_done_at_once`); built once (Core, on
#: the table: no ORM compile step, the cache key computed once; issue 11).
_CREATE_DONE = (
    update(ServerRequest.__table__)
    .where(_R.id == bindparam("request_id"), _R.fence == bindparam("token"))
    .where(_R.state == S.BUILDING, _R.job_id == bindparam("done_job_id"))
    .where(_R.cleanup_server_id.is_(None))
    .where(~exists().where(VolumeAttachment.__table__.c.request_id == _R.id))
    .values(
        state=S.TAGGING,
        server_id=bindparam("built_server_id"),
        job_id=None,
        wait_deadline_at=None,
        step_done=None,
        restarts=0,  # it moves, as after a hand-off
        updated_at=bindparam("now"),
    )
    .returning(_R.spec, _R.name, _R.create_serial, _R.cloud_name)
)
#: What a poll stores of its job's answer (see :func:`_job_values`), when the job is done.
_JOB_DONE = (
    update(_JOBS)
    .where(_JOBS.c.job_id == bindparam("done_job_id"))
    .values(
        status=bindparam("job_status"),
        polls=_JOBS.c.polls + 1,
        begin_time=bindparam("job_begin"),
        end_time=bindparam("job_end"),
        updated_at=bindparam("now"),
    )
)


def _create_done_at_once(chain: Chain, job_id: str, job: Job) -> Next | None:
    """The usual end of a create, in three statements and no row loaded: the request this
    message owns, BUILDING on ``job_id`` with nothing to clean up and no volume, becomes
    TAGGING on its server in one conditional UPDATE (returning what the tagging stage needs),
    the job's row stores the answer, and the event is added; the stage is then done at once
    (:func:`tasks.finish.stage_at_once`), as :func:`_create_done` would have it. ``None``:
    anything else (a cancel, volumes, a stale message, a job that names a failure), which the
    claim sorts out (nothing was written)."""
    if job.failures:
        return None
    request_id, server_id, now = uuid.UUID(chain.request_id), job.server_ids[0], utcnow()
    params = {"request_id": request_id, "token": chain.fence, "done_job_id": job_id,
              "built_server_id": server_id, "now": now}  # fmt: skip
    with session_scope(runtime().sessions) as session:
        row = session.execute(_CREATE_DONE, params).one_or_none()
        if row is None:
            return None
        spec, name, create_serial, cloud_name = row
        if spec.get("attach_volumes"):
            # Volumes listed but no row of them (stored by hand): the claim's way decides.
            session.rollback()
            return None
        _store_done_job(session, request_id, job_id, job, params)
        add_event(session, request_id, S.BUILDING, S.TAGGING, f"server {server_id} built", now)
    marker_name = create_serial == 0 or cloud_name not in (None, name)
    stage = Stage(server_id, spec, name, marker_name)
    return stage_at_once(Chain(chain.request_id, chain.fence), stage)


#: The end of a plain request's create (see :func:`_ready_at_once`): as :data:`_CREATE_DONE`,
#: straight on to ACTIVE with the server's addresses, its stage's only call made.
_READY = (
    update(ServerRequest.__table__)
    .where(_R.id == bindparam("request_id"), _R.fence == bindparam("token"))
    .where(_R.state == S.BUILDING, _R.job_id == bindparam("done_job_id"))
    .where(_R.cleanup_server_id.is_(None))
    .where(~exists().where(VolumeAttachment.__table__.c.request_id == _R.id))
    .values(
        state=S.ACTIVE,
        server_id=bindparam("built_server_id"),
        job_id=None,
        wait_deadline_at=None,
        step_done=Step.FINALIZE,
        restarts=0,
        addresses=bindparam("read_addresses", type_=_R.addresses.type),
        updated_at=bindparam("now"),
    )
    .returning(_R.batch_id, _R.spec, _R.name, _R.create_serial, _R.cloud_name)
)


def _ready_at_once(chain: Chain, job_id: str, job: Job) -> bool:
    """A plain request's create done (``chain.plain``: its stage is the read-back alone) ends
    in one transaction: the server is read back first, then the request this message owns,
    BUILDING on ``job_id`` with nothing to clean up, becomes ACTIVE in one conditional UPDATE,
    the job's row stores the answer, and both events (built, ready) are added. One transaction
    instead of two: the TAGGING state between them is never committed, as no call of the stage
    needs it kept. A worker killed before the commit leaves the row BUILDING: the redelivered
    poll sees the job done and reads the server again.

    ``False``, nothing written: anything else (a read that fails or finds the server not ACTIVE,
    a cancel, a stale message, a row that is not plain after all), which the two-transaction way
    sorts out as before, with the failures of the stage's own steps."""
    if job.failures:
        return False
    server_id = job.server_ids[0]
    try:
        server = runtime().client.show_server(server_id)
    except (CloudError, NoCapacity) as exc:
        if isinstance(exc, Throttled) and exc.api_class:
            runtime().limiter.back_off(exc.api_class, exc.retry_after)
        return False
    if server.get("status") != "ACTIVE":
        return False
    request_id, now = uuid.UUID(chain.request_id), utcnow()
    params = {"request_id": request_id, "token": chain.fence, "done_job_id": job_id,
              "built_server_id": server_id, "now": now,
              "read_addresses": server.get("addresses") or {}}  # fmt: skip
    with session_scope(runtime().sessions) as session:
        row = session.execute(_READY, params).one_or_none()
        if row is None:
            return False
        batch_id, spec, name, create_serial, cloud_name = row
        if not is_plain(spec, name, create_serial, cloud_name):
            session.rollback()  # the message said plain, the row says otherwise: the row rules
            return False
        _store_done_job(session, request_id, job_id, job, params)
        batch_of(session)[request_id] = batch_id
        add_event(session, request_id, S.BUILDING, S.TAGGING, f"server {server_id} built", now)
        add_event(session, request_id, S.TAGGING, S.ACTIVE, f"server {server_id} ready", now)
    return True


def _store_done_job(session, request_id: uuid.UUID, job_id: str, job: Job, params: dict) -> None:
    """The done job's answer in its row (one UPDATE), or the row itself for one an older
    release never recorded, as :func:`_record` does."""
    answer = {"job_status": job.status, "job_begin": job.begin_time, "job_end": job.end_time}
    if not session.execute(_JOB_DONE, params | answer).rowcount:
        values = _job_values(job) | {"polls": 1}
        session.add(CloudJob(job_id=job_id, request_id=request_id, kind=JobKind.CREATE,
                             **values))  # fmt: skip


def _job_forgotten(chain: Chain, job_id: str) -> Next:
    """The cloud no longer knows the create job (expired, or removed by hand). What it made is
    found the way a lost answer's is: by listing the name for the create's marker, so a poll of
    a forgotten job neither fails every retry the same way nor creates a second server."""
    with claim(chain) as (session, request):
        if not _watching(request, job_id):
            return handoff(request)
        if not request.create_marker:  # a row of the release that renamed: nothing to look up
            failure = _CreateFailure([], "ORCH.JOB_UNKNOWN", f"job {job_id} unknown")
            return _create_failed(session, request, failure)
        # The intent dates from the POST: the job was recorded as soon as it was answered.
        request.create_intent_at = _posted_at(session, job_id)
        request.job_id = None
        if request.attempt >= runtime().settings.max_attempts and request.state is S.BUILDING:
            # The look-up may lead to another POST: bounded like any attempt. The intent is
            # kept, so that a retry looks the marker up first.
            fail(session, request, Step.POLL_CREATE, "ORCH.JOB_UNKNOWN", f"job {job_id} unknown")
            return handoff(request)
        request.attempt += 1
        detail = f"create job {job_id} unknown to the cloud: looking up {request.create_marker}"
        if request.state is S.BUILDING:
            transition(session, request, S.CREATING, detail=detail)
        else:
            record_note(session, request, detail)
        return handoff(request)


@step_task("bms.wait_server_built", Step.POLL_CREATE)
def wait_server_built(chain: Chain) -> Next | None:
    """For an adopted server (no job id): watch its status instead of its job."""
    with claim(chain) as (_session, request):
        if request.state is not S.BUILDING or request.job_id or not request.server_id:
            return handoff(request)
        if request.wait_deadline_at is None:
            # Stored, so that nothing else touching the row (the reconciler) moves it.
            request.wait_deadline_at = utcnow() + timedelta(seconds=DEADLINES[JobKind.CREATE])
        server_id = request.server_id
    server = runtime().client.show_server(server_id)
    status = server.get("status")
    with claim(chain) as (session, request):
        if request.server_id != server_id:
            return handoff(request)
        if status == "ACTIVE":
            return _create_done(session, request, server_id)
        if status in ("ERROR", "DELETED"):
            fault = server.get("fault") or {}
            failure = _CreateFailure([server_id], "BMS.3004", fault.get("message") or status)
            return _create_failed(session, request, failure)
        if request.state is S.BUILDING and utcnow() > as_utc(request.wait_deadline_at):
            failure = _CreateFailure([server_id], TIMEOUT_CODE, "server never became ACTIVE")
            return _create_failed(session, request, failure)
        advance(request)
    raise Wait(first_poll(JobKind.CREATE), "server building")


def has_attachments(request: ServerRequest) -> bool:
    """Whether the request has volumes to attach: its spec says so (intake stores one row per
    volume listed there), so the rows are loaded only by the steps that attach them. A spec
    without the list (a row stored by hand) is answered from the rows."""
    volumes = request.spec.get("attach_volumes")
    return bool(volumes) if volumes is not None else bool(request.attachments)


@dataclass
class _CreateFailure:
    server_ids: list[str]
    code: str | None
    reason: str


def _create_done(session, request: ServerRequest, server_id: str) -> Next:
    request.server_id = server_id
    request.job_id = request.wait_deadline_at = None
    if request.state is S.CANCELLED:
        # Cancelled while being created: the rule is finish, then delete (see README).
        request.cleanup_server_id, request.cleanup_attempts = server_id, 0
        return handoff(request)
    next_state = S.ATTACHING if has_attachments(request) else S.TAGGING
    request.step_done = None
    transition(session, request, next_state, detail=f"server {server_id} built")
    if next_state is S.ATTACHING:
        # Named without reading the attachments (issue 11: a SELECT per server): a server just
        # built has none begun. Should one be (under way since a retry), the attach step's claim
        # reads them and hands the request to what it needs.
        advance(request)
        return Next(step_signature("bms.attach_volume", request))
    return at_once(request)


def _create_failed(session, request: ServerRequest, failure: _CreateFailure) -> Next:
    if request.job_id and failure.code == TIMEOUT_CODE and not failure.server_ids:
        # The job still runs and may yet make a server: the stray sweeper watches it to its end.
        reason = f"create job {request.job_id} past its deadline"
        session.add(StrayServer(request_id=request.id, create_job_id=request.job_id, reason=reason))
        record_note(session, request, f"{reason}: queued for deletion")
    request.job_id = request.wait_deadline_at = None
    request.server_id = None
    request.create_marker = None
    # Whatever the job made is deleted before the next attempt (or for good).
    request.cleanup_server_id = failure.server_ids[0] if failure.server_ids else None
    request.cleanup_attempts = 0
    request.last_error_code, request.last_error_message = failure.code, failure.reason
    if request.state is S.CANCELLED:
        return handoff(request)
    retryable = is_retryable(failure.code, from_job=True) and failure.code != TIMEOUT_CODE
    if retryable and request.attempt < runtime().settings.max_attempts:
        transition(
            session, request, S.CREATING, detail=f"attempt {request.attempt}: {failure.code}"
        )
        return handoff(request, countdown=create_backoff(request.attempt))
    fail(session, request, Step.CREATE, failure.code, failure.reason)
    return handoff(request)


@step_task("bms.poll_attach_job", Step.ATTACH)
def poll_attach_job(chain: Chain) -> Next | None:
    """Watch the current attach job; once it is done, the next volume's attach goes on in this
    run when an attach slot is free (see :mod:`tasks.attach`)."""
    with claim(chain, attachments=True) as (_session, request):
        attachment = _current_attachment(request)
        if request.state is not S.ATTACHING or attachment is None or not attachment.job_id:
            return handoff(request)
        job_id = attachment.job_id
        more = any(a.state is not AttachmentState.ATTACHED for a in request.attachments
                   if a is not attachment)  # fmt: skip
    try:
        job = runtime().client.show_job(job_id)
    except NotFound:
        return _attach_job_forgotten(chain, job_id)
    # The slot is taken before the row is: none free, and the next attach is a message.
    done = job.outcome is JobOutcome.DONE
    outcome = with_next_slot(done and more, lambda slot: _attach_polled(chain, job_id, job, slot))
    if isinstance(outcome, Then):
        return attach_from(chain, outcome.target, outcome.held)
    return outcome


def _attach_polled(chain: Chain, job_id: str, job: Job, slot: Slot | None) -> Next | Then:
    wait = None
    with claim(chain, attachments=True) as (session, request):
        attachment = _current_attachment(request)
        if attachment is None or attachment.job_id != job_id:
            return handoff(request)
        cloud_job = _record(session, request, job_id, job, JobKind.ATTACH)
        if request.state is not S.ATTACHING:
            # Cancelled (or ended) during the call: the server is deleted, volumes and all.
            return handoff(request)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                return attach_failed(session, request, attachment, TIMEOUT_CODE, "timed out")
            advance(request)
        elif job.outcome is JobOutcome.DONE:
            return attach_done(session, request, attachment, slot)
        else:
            first = job.failures[0]
            return attach_failed(
                session, request, attachment, first.error_code, first.fail_reason or "failed"
            )
    raise Wait(wait, "attach job running")


def _attach_job_forgotten(chain: Chain, job_id: str) -> Next:
    """The cloud no longer knows the attach job: the disk's status tells what it did, as after
    a lost answer (the attach step reads it before any new POST)."""
    with claim(chain, attachments=True) as (session, request):
        attachment = _current_attachment(request)
        if attachment is None or attachment.job_id != job_id:
            return handoff(request)
        attachment.intent_at = _posted_at(session, job_id)
        attachment.job_id = None
        record_note(session, request, f"attach job {job_id} unknown to the cloud: reading disk "
                    f"{attachment.volume_id}")  # fmt: skip
        return handoff(request)


def _current_attachment(request: ServerRequest):
    return next((a for a in request.attachments if a.state is AttachmentState.ATTACHING), None)
