"""Delete a failed or cancelled server, and wait the deletion out, before the request goes on.

Used when a create job failed (the next attempt starts once the failed server is gone, so no
failed server is left billed) and when a request is cancelled after its server was made. A
delete that the cloud refuses or that keeps failing is recorded on the request, not retried
forever: the budget counts the delete calls of the server being deleted now, and a delete job
is watched up to its deadline.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import update

from bms.exceptions import CloudAPIError, NotFound
from bms.jobs import JobOutcome
from models.base import as_utc, utcnow
from models.records import (
    AttachmentState,
    CloudJob,
    JobKind,
    ServerRequest,
    VolumeAttachment,
    record_note,
)
from models.states import RequestState, Step
from tasks.base import Chain, Next, Wait, advance, claim, handoff, step_task
from tasks.errors import TIMEOUT_CODE
from tasks.timing import DEADLINES, create_backoff, first_poll, next_poll
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.cleanup")


@step_task("bms.delete_server", Step.CREATE)
def delete_server(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        server_id = request.cleanup_server_id
        if not server_id or request.cleanup_job_id:
            return handoff(request)
    try:
        job_id = runtime().client.delete_servers([server_id])
    except NotFound:
        return _finished(chain, f"server {server_id} already gone", gone=server_id)
    except CloudAPIError as exc:
        if exc.transient:
            raise
        return _delete_refused(chain, server_id, exc)
    with claim(chain) as (session, request):
        if request.cleanup_server_id != server_id:
            return handoff(request)
        request.wait_deadline_at = None
        request.cleanup_job_id = job_id
        request.cleanup_attempts += 1
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.DELETE))
        return handoff(request, first_poll(JobKind.DELETE))


def _delete_refused(chain: Chain, server_id: str, exc: CloudAPIError) -> Next:
    """A refused delete may be an earlier delete of ours, whose answer was lost, still running:
    the server is watched until it is gone (up to the delete deadline) before anything is given
    up. A server that is not going anywhere was refused for good: an operator must delete it."""
    try:
        server = runtime().client.show_server(server_id)
    except NotFound:
        return _finished(chain, f"server {server_id} gone")
    if server.get("status") == "DELETED":
        return _finished(chain, f"server {server_id} deleted", gone=server_id)
    if server.get("OS-EXT-STS:task_state") != "deleting":
        message = f"delete of server {server_id} refused ({exc}): delete it by hand"
        log.error("%s: %s", chain.request_id, message)
        return _finished(chain, message, error=exc.error_code)
    with claim(chain) as (session, request):
        if request.cleanup_server_id != server_id:
            return handoff(request)
        if request.wait_deadline_at is None:
            request.wait_deadline_at = utcnow() + timedelta(seconds=DEADLINES[JobKind.DELETE])
        elif utcnow() > as_utc(request.wait_deadline_at):
            request.wait_deadline_at = None
            return _delete_failed(session, request, server_id, TIMEOUT_CODE)
        advance(request)
    raise Wait(next_poll(JobKind.DELETE, 1), "an earlier delete of the server is running")


@step_task("bms.poll_delete_job", Step.CREATE)
def poll_delete_job(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        job_id, server_id = request.cleanup_job_id, request.cleanup_server_id
        if not job_id:
            return handoff(request)
    try:
        job = runtime().client.show_job(job_id)
    except NotFound:
        return _delete_job_forgotten(chain, job_id, server_id)
    except CloudAPIError as exc:
        if exc.transient:
            raise
        # The cloud refuses to show this job: say so, do not loop.
        return _finished(chain, f"delete job {job_id} of {server_id} unreadable: {exc}")
    with claim(chain) as (session, request):
        if request.cleanup_job_id != job_id:
            return handoff(request)
        cloud_job = session.get(CloudJob, job_id)
        if cloud_job is None:  # a row of an older release: its deadline counts from now
            cloud_job = CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.DELETE)
            session.add(cloud_job)
            session.flush()
        cloud_job.status, cloud_job.polls = job.status, cloud_job.polls + 1
        request.updated_at = utcnow()  # progress, for the reconciler
        if job.outcome is JobOutcome.RUNNING:
            deadline = as_utc(cloud_job.created_at) + timedelta(seconds=DEADLINES[JobKind.DELETE])
            if utcnow() > deadline:
                return _delete_failed(session, request, server_id, TIMEOUT_CODE)
            wait = next_poll(JobKind.DELETE, cloud_job.polls)
            advance(request)
        elif job.outcome is JobOutcome.DONE:
            _volumes_left_with(session, request, server_id)
            return _clear(session, request, f"deleted server {server_id}")
        else:
            failure = job.failures[0] if job.failures else None
            cloud_job.error_code = failure.error_code if failure else job.error_code
            return _delete_failed(session, request, server_id, cloud_job.error_code)
    raise Wait(wait, "delete job running")


def _delete_job_forgotten(chain: Chain, job_id: str, server_id: str) -> Next:
    """The cloud no longer knows the delete job: delete again, which settles it (gone: done;
    still deleting: watched; still there: a new delete, under the same budget). Before, the
    server was reported deleted while it might still run, billed."""
    with claim(chain) as (session, request):
        if request.cleanup_job_id != job_id:
            return handoff(request)
        # Counted like a failed delete job: again while the budget lasts, then an operator.
        return _delete_failed(session, request, server_id, f"job {job_id} unknown")


def _delete_failed(session, request: ServerRequest, server_id: str, code: str | None) -> Next:
    if request.cleanup_attempts < runtime().settings.max_attempts:
        request.cleanup_job_id = None  # delete again
        record_note(session, request, f"delete of server {server_id} failed ({code}), again")
        return handoff(request, first_poll(JobKind.DELETE))
    log.error("%s: server %s could not be deleted (%s)", request.id, server_id, code)
    request.last_error_code = code
    request.last_error_message = f"server {server_id} could not be deleted: delete it by hand"
    return _clear(session, request, request.last_error_message)


def _finished(chain: Chain, detail: str, error: str | None = None, gone: str | None = None) -> Next:
    """End the cleanup with ``detail``; ``gone``: the id of the server found deleted."""
    with claim(chain) as (session, request):
        if error is not None:
            request.last_error_code, request.last_error_message = error, detail
        if gone is not None:
            _volumes_left_with(session, request, gone)
        return _clear(session, request, detail)


def _volumes_left_with(session, request: ServerRequest, server_id: str) -> None:
    """The request's own server is deleted (cancelled after it was made): the cloud detached
    its volumes with it, so their rows say DETACHED, not ATTACHING or ATTACHED for a server
    that is gone (what ``bmsctl show`` printed, while the volumes were already available)."""
    if server_id != request.server_id:
        return  # an earlier attempt's failed server: it never had the request's volumes
    session.execute(
        update(VolumeAttachment)
        .where(VolumeAttachment.request_id == request.id)
        .where(VolumeAttachment.state.in_([AttachmentState.ATTACHING, AttachmentState.ATTACHED]))
        .values(state=AttachmentState.DETACHED, job_id=None, intent_at=None)
    )


def _clear(session, request: ServerRequest, detail: str) -> Next:
    request.cleanup_server_id = request.cleanup_job_id = None
    request.cleanup_attempts = 0
    request.wait_deadline_at = None
    record_note(session, request, detail)
    # The next create attempt waits out its backoff; anything else goes on at once.
    backoff = create_backoff(request.attempt) if request.state is RequestState.CREATING else 0
    return handoff(request, countdown=backoff)
