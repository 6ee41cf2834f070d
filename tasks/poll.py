"""Step 2 (and 3b): watch asynchronous cloud jobs to their end, never sleeping in a worker.

A poll that finds the job running re-schedules itself with a growing delay; past the deadline of
its kind the job counts as failed. Every sub_job is checked: a create is done only when all are.
A failed create is classified from its code: retryable with attempts left goes back to CREATING
(the failed server deleted first), anything else is FAILED, keeping the step, code and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from bms.jobs import Job, JobOutcome
from models.base import as_utc, utcnow
from models.records import AttachmentState, CloudJob, JobKind, ServerRequest, transition
from models.states import RequestState, Step
from tasks.base import Next, Wait, claim, fail, step_task
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.plan import next_signature
from tasks.timing import DEADLINES, create_backoff, first_poll, next_poll
from worker.runtime import runtime

S = RequestState


def _record(session, request: ServerRequest, job: Job) -> CloudJob:
    """Store what the poll saw, and mark the request as making progress."""
    cloud_job = session.get(CloudJob, job.job_id) if job.job_id else None
    if cloud_job is None:
        raise LookupError(f"job {job.job_id} of request {request.id} is not recorded")
    cloud_job.status = job.status
    cloud_job.polls += 1
    cloud_job.begin_time, cloud_job.end_time = job.begin_time, job.end_time
    failure = job.failures[0] if job.failures else None
    if failure is not None:
        cloud_job.error_code, cloud_job.fail_reason = failure.error_code, failure.fail_reason
    request.updated_at = utcnow()
    return cloud_job


def _still_running(cloud_job: CloudJob) -> float | None:
    """Seconds until the next poll, or ``None`` when the job is past its deadline."""
    age = utcnow() - as_utc(cloud_job.created_at)
    if age > timedelta(seconds=DEADLINES[cloud_job.kind]):
        return None
    return next_poll(cloud_job.kind, cloud_job.polls)


@step_task("bms.poll_create_job", Step.POLL_CREATE)
def poll_create_job(*, request_id: str, fence: int) -> Next | None:
    with claim(request_id, fence) as (_session, request):
        if request.state not in (S.BUILDING, S.CANCELLED) or not request.job_id:
            return Next(next_signature(request))
        job_id = request.job_id
    job = runtime().client.show_job(job_id)
    wait = None
    with claim(request_id, fence) as (session, request):
        if request.job_id != job_id:
            return Next(next_signature(request))
        cloud_job = _record(session, request, job)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                failure = _CreateFailure(job.server_ids, TIMEOUT_CODE, "create job timed out")
                return _create_failed(session, request, failure)
        elif job.outcome is JobOutcome.DONE:
            return _create_done(session, request, job.server_ids[0])
        else:
            first = job.failures[0]
            reason = first.fail_reason or f"create job {job_id} failed"
            failure = _CreateFailure(job.server_ids, first.error_code, reason)
            return _create_failed(session, request, failure)
    raise Wait(wait, "create job running")


@step_task("bms.wait_server_built", Step.POLL_CREATE)
def wait_server_built(*, request_id: str, fence: int) -> Next | None:
    """For an adopted server (no job id): watch its status instead of its job."""
    with claim(request_id, fence) as (_session, request):
        if request.state is not S.BUILDING or request.job_id or not request.server_id:
            return Next(next_signature(request))
        server_id, since = request.server_id, request.updated_at
    server = runtime().client.show_server(server_id)
    status = server.get("status")
    with claim(request_id, fence) as (session, request):
        if status == "ACTIVE":
            return _create_done(session, request, server_id)
        if status in ("ERROR", "DELETED"):
            fault = server.get("fault") or {}
            failure = _CreateFailure([server_id], "BMS.3004", fault.get("message") or status)
            return _create_failed(session, request, failure)
        age = utcnow() - as_utc(since)
        if age > timedelta(seconds=DEADLINES[JobKind.CREATE]):
            failure = _CreateFailure([server_id], TIMEOUT_CODE, "server never became ACTIVE")
            return _create_failed(session, request, failure)
    raise Wait(first_poll(JobKind.CREATE), "server building")


@dataclass
class _CreateFailure:
    server_ids: list[str]
    code: str | None
    reason: str


def _create_done(session, request: ServerRequest, server_id: str) -> Next:
    request.server_id = server_id
    request.job_id = None
    if request.state is S.CANCELLED:
        # Cancelled while being created: the rule is finish, then delete (see README).
        request.cleanup_server_id = server_id
        return Next(next_signature(request))
    next_state = S.ATTACHING if request.attachments else S.TAGGING
    request.step_done = None
    transition(session, request, next_state, detail=f"server {server_id} built")
    return Next(next_signature(request))


def _create_failed(session, request: ServerRequest, failure: _CreateFailure) -> Next:
    request.job_id = None
    request.server_id = None
    request.create_marker = None
    # Whatever the job made is deleted before the next attempt (or for good).
    request.cleanup_server_id = failure.server_ids[0] if failure.server_ids else None
    request.last_error_code, request.last_error_message = failure.code, failure.reason
    if request.state is S.CANCELLED:
        return Next(next_signature(request))
    retryable = is_retryable(failure.code, from_job=True) and failure.code != TIMEOUT_CODE
    if retryable and request.attempt < runtime().settings.max_attempts:
        transition(
            session, request, S.CREATING, detail=f"attempt {request.attempt}: {failure.code}"
        )
        return Next(next_signature(request, countdown=create_backoff(request.attempt)))
    fail(session, request, Step.CREATE, failure.code, failure.reason)
    return Next(next_signature(request))


@step_task("bms.poll_attach_job", Step.ATTACH)
def poll_attach_job(*, request_id: str, fence: int) -> Next | None:
    with claim(request_id, fence) as (_session, request):
        attachment = _current_attachment(request)
        if request.state is not S.ATTACHING or attachment is None or not attachment.job_id:
            return Next(next_signature(request))
        job_id = attachment.job_id
    job = runtime().client.show_job(job_id)
    wait = None
    with claim(request_id, fence) as (session, request):
        attachment = _current_attachment(request)
        if attachment is None or attachment.job_id != job_id:
            return Next(next_signature(request))
        cloud_job = _record(session, request, job)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                return _attach_failed(session, request, attachment, TIMEOUT_CODE, "timed out")
        elif job.outcome is JobOutcome.DONE:
            attachment.state, attachment.job_id = AttachmentState.ATTACHED, None
            if all(a.state is AttachmentState.ATTACHED for a in request.attachments):
                transition(session, request, S.TAGGING, detail="volumes attached")
            return Next(next_signature(request))
        else:
            first = job.failures[0]
            return _attach_failed(
                session, request, attachment, first.error_code, first.fail_reason or "failed"
            )
    raise Wait(wait, "attach job running")


def _current_attachment(request: ServerRequest):
    return next((a for a in request.attachments if a.state is AttachmentState.ATTACHING), None)


def _attach_failed(session, request, attachment, code: str | None, reason: str) -> Next:
    """A failed attach job retries that attach only; out of attempts the request FAILS."""
    attachment.job_id = None
    request.last_error_code, request.last_error_message = code, reason
    if attachment.attempt < runtime().settings.max_attempts and code != TIMEOUT_CODE:
        attachment.state = AttachmentState.PENDING
        return Next(next_signature(request, countdown=first_poll(JobKind.ATTACH)))
    attachment.state = AttachmentState.FAILED
    fail(session, request, Step.ATTACH, code, f"volume {attachment.volume_id}: {reason}")
    return Next(None)
