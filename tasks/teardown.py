"""Teardown: remove a batch's servers and keep their volumes.

For each request that has a server (ACTIVE, or the leftover of a FAILED or CANCELLED one): its
volumes are detached one at a time, then the server is deleted and its delete job watched to
the end; the volumes stay, ``available``. The request goes TEARING_DOWN -> TORN_DOWN (or FAILED
at step ``teardown`` when the cloud will not delete it; ``retry`` or another teardown resumes).

Every cloud call is crash-safe the way the create is:

- the row records the intent first (an attachment in ``DETACHING``, ``teardown_intent_at``);
- a re-run that finds an intent but no job id (the answer was lost) looks at the cloud before
  calling again: a volume no longer listed on the server is detached; a server gone, DELETED or
  ``deleting`` needs no second delete;
- a redelivered message finds its step done on the row and only hands the request on.

A cancel during teardown stops it at the next step: the server and whatever volumes are still
attached stay (a later teardown takes the request again).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from bms.exceptions import BadRequest, CloudAPIError, CloudTransportError, NotFound, Throttled
from bms.jobs import JobOutcome
from models.base import as_utc, utcnow
from models.db import session_scope
from models.records import (
    AttachmentState,
    CloudJob,
    JobKind,
    ServerRequest,
    VolumeAttachment,
    record_note,
    transition,
)
from models.states import RequestState, Step
from tasks.base import Chain, Next, Wait, advance, claim, fail, handoff, step_task
from tasks.control import dispatch
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.timing import DEADLINES, first_poll, next_poll
from worker.limiter import NoCapacity
from worker.runtime import runtime

S = RequestState
A = AttachmentState

#: States whose server a teardown may remove (an unfinished request must be cancelled first).
TEARABLE_STATES = frozenset({S.ACTIVE, S.FAILED, S.CANCELLED})
#: Attachments that may hold a volume on the server: each is detached (or found detached).
MAY_BE_ATTACHED = frozenset({A.ATTACHED, A.ATTACHING, A.FAILED, A.KEPT})
#: Refusals that mean "this volume is not attached to this server" (reference 8): of the
#: detach (``BMS.0114``, ``BMS.1006``) and of the attachment list (``BMS.1007``).
NOT_ATTACHED_CODES = frozenset({"BMS.0114", "BMS.1006", "BMS.1007"})
#: Delete refusal that means "this server is being deleted already" (reference 12).
BEING_DELETED_CODE = "BMS.0040"


# -- starting ---------------------------------------------------------------------------------


@dataclass
class TeardownStarted:
    started: list[uuid.UUID] = field(default_factory=list)
    #: Requests left alone, with why: no server, still being provisioned, torn down already.
    skipped: list[tuple[uuid.UUID, str]] = field(default_factory=list)


def start_teardown(
    sessions: sessionmaker[Session], request_ids: Iterable[uuid.UUID]
) -> TeardownStarted:
    """Move each request that has a server to TEARING_DOWN and send its first step."""
    result = TeardownStarted()
    for request_id in request_ids:
        with session_scope(sessions) as session:
            request = session.scalar(
                select(ServerRequest)
                .where(ServerRequest.id == request_id)
                .options(selectinload(ServerRequest.attachments))
                .with_for_update()
            )
            if request is None:
                continue
            reason = _not_tearable(request)
            if reason:
                result.skipped.append((request.id, reason))
                continue
            _begin(session, request)
            result.started.append(request.id)
    dispatch(sessions, result.started)
    return result


def _not_tearable(request: ServerRequest) -> str | None:
    if request.state is S.TEARING_DOWN:
        return "already tearing down"
    if request.state is S.TORN_DOWN:
        return "already torn down"
    if request.state not in TEARABLE_STATES:
        return f"{request.state.value}: cancel it first"
    if request.cleanup_server_id or request.job_id:
        return "its server is still being created or deleted"
    if not request.server_id:
        return "has no server"
    return None


def _begin(session: Session, request: ServerRequest) -> None:
    request.failed_step = None
    request.teardown_job_id = request.teardown_intent_at = None
    request.teardown_attempts = 0
    for attachment in request.attachments:
        # An attach that was sent (even refused or failed) may have left the volume attached.
        sent = attachment.state is not A.PENDING or attachment.attempt > 0
        if attachment.state in MAY_BE_ATTACHED or (attachment.state is A.PENDING and sent):
            attachment.state, attachment.attempt, attachment.job_id = A.TO_DETACH, 0, None
    transition(session, request, S.TEARING_DOWN, detail=f"teardown of server {request.server_id}")


# -- detach -----------------------------------------------------------------------------------


@step_task("bms.detach_volume", Step.TEARDOWN)
def detach_volume(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        attachment = _to_detach(request)
        if request.state is not S.TEARING_DOWN or attachment is None or attachment.job_id:
            return handoff(request)
        resumed = attachment.state is A.DETACHING  # sent before, answer lost
        if not resumed:
            attachment.state, attachment.attempt = A.DETACHING, attachment.attempt + 1
        position, volume_id, server_id = (
            attachment.position,
            attachment.volume_id,
            request.server_id,
        )
    client = runtime().client
    try:
        if resumed and not _listed(client, server_id, volume_id):
            return _detached(chain, position, "no longer attached")
        job_id = client.detach_volume(server_id, volume_id)
    except (NoCapacity, Throttled):
        _not_sent(chain, position, resumed)
        raise
    except CloudTransportError as exc:
        if not exc.outcome_unknown:
            _not_sent(chain, position, resumed)
        raise
    except NotFound:
        return _detached(chain, position, f"server {server_id} is gone")
    except BadRequest as exc:
        return _detach_refused(chain, position, exc, resumed)
    # Recorded whatever the fence: the cloud started this job.
    with claim(chain, owned=False) as (session, request):
        attachment = request.attachments[position]
        attachment.job_id = job_id
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.DETACH))
        owner = chain.owns(request) and request.state is S.TEARING_DOWN
        return handoff(request, first_poll(JobKind.DETACH)) if owner else Next(None)


def _to_detach(request: ServerRequest) -> VolumeAttachment | None:
    return next((a for a in request.attachments if a.state in (A.TO_DETACH, A.DETACHING)), None)


def _listed(client, server_id: str, volume_id: str) -> bool:
    return volume_id in {a.get("volumeId") for a in client.list_volume_attachments(server_id)}


def _not_sent(chain: Chain, position: int, resumed: bool) -> None:
    """The detach never reached the cloud (a quota said wait): no intent, no attempt spent."""
    if resumed:
        return  # an earlier call may be in the cloud: the intent stays
    with claim(chain) as (_session, request):
        attachment = request.attachments[position]
        attachment.state, attachment.attempt = A.TO_DETACH, attachment.attempt - 1


def _detached(chain: Chain, position: int, detail: str) -> Next:
    with claim(chain) as (session, request):
        attachment = request.attachments[position]
        attachment.state, attachment.job_id = A.DETACHED, None
        record_note(session, request, f"volume {attachment.volume_id} detached ({detail})")
        return handoff(request)


def _detach_refused(chain: Chain, position: int, exc: CloudAPIError, resumed: bool) -> Next:
    if exc.error_code in NOT_ATTACHED_CODES:
        return _detached(chain, position, "not attached")
    with claim(chain) as (session, request):
        attachment = request.attachments[position]
        # After a lost answer our own detach may still be running ("detaching"): look again
        # later. A first refusal with a permanent code (the server in ERROR) will not change.
        again = resumed or is_retryable(exc.error_code, from_job=False)
        if not again or attachment.attempt >= runtime().settings.max_attempts:
            return _keep(session, request, attachment, f"{exc.error_code} {exc.message}")
        attachment.state = A.DETACHING
        wait = first_poll(JobKind.DETACH)
        advance(request)  # the re-run owns the request
    raise Wait(wait, "detach refused")


def _keep(session, request: ServerRequest, attachment: VolumeAttachment, why: str) -> Next:
    """Give up detaching: the server's delete releases the volume (it is never deleted)."""
    attachment.state, attachment.job_id = A.KEPT, None
    record_note(session, request, f"volume {attachment.volume_id} not detached ({why})")
    return handoff(request)


@step_task("bms.poll_detach_job", Step.TEARDOWN)
def poll_detach_job(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        attachment = _to_detach(request)
        if request.state is not S.TEARING_DOWN or attachment is None or not attachment.job_id:
            return handoff(request)
        job_id = attachment.job_id
    job = runtime().client.show_job(job_id)
    with claim(chain) as (session, request):
        attachment = _to_detach(request)
        if attachment is None or attachment.job_id != job_id:
            return handoff(request)
        cloud_job = _record(session, request, job)
        if job.outcome is JobOutcome.DONE:
            return _detached_now(session, request, attachment)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                return _keep(session, request, attachment, "detach job timed out")
            advance(request)
        elif attachment.attempt < runtime().settings.max_attempts:
            attachment.state, attachment.job_id = A.TO_DETACH, None
            return handoff(request, first_poll(JobKind.DETACH))
        else:
            return _keep(session, request, attachment, f"detach job failed: {cloud_job.error_code}")
    raise Wait(wait, "detach job running")


def _detached_now(session, request: ServerRequest, attachment: VolumeAttachment) -> Next:
    attachment.state, attachment.job_id = A.DETACHED, None
    record_note(session, request, f"volume {attachment.volume_id} detached")
    return handoff(request)


# -- delete -----------------------------------------------------------------------------------


@step_task("bms.teardown_server", Step.TEARDOWN)
def teardown_server(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        if request.state is not S.TEARING_DOWN or request.teardown_job_id or _to_detach(request):
            return handoff(request)
        resumed = request.teardown_intent_at is not None
        server_id, since = request.server_id, request.teardown_intent_at
    client = runtime().client
    if resumed:
        # The last delete's answer was lost: look at the server before deleting again.
        gone, deleting = _server_state(client, server_id)
        if gone:
            return _torn_down(chain, f"server {server_id} deleted")
        if deleting:
            return _wait_deleting(chain, since)
    _intend(chain)
    try:
        job_id = client.delete_servers([server_id])
    except (NoCapacity, Throttled):
        _delete_not_sent(chain)
        raise
    except CloudTransportError as exc:
        if not exc.outcome_unknown:
            _delete_not_sent(chain)
        raise
    except NotFound:
        return _torn_down(chain, f"server {server_id} already gone")
    except BadRequest as exc:
        if exc.error_code == BEING_DELETED_CODE:
            return _wait_deleting(chain, since or utcnow())
        return _delete_failed(chain, exc.error_code, f"delete refused: {exc.message}")
    with claim(chain, owned=False) as (session, request):
        request.teardown_job_id, request.teardown_intent_at = job_id, None
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.DELETE))
        owner = chain.owns(request) and request.state is S.TEARING_DOWN
        return handoff(request, first_poll(JobKind.DELETE)) if owner else Next(None)


def _server_state(client, server_id: str) -> tuple[bool, bool]:
    """``(gone, deleting)`` as the cloud shows the server now."""
    try:
        server = client.show_server(server_id)
    except NotFound:
        return True, False
    return server.get("status") == "DELETED", server.get("OS-EXT-STS:task_state") == "deleting"


def _intend(chain: Chain) -> None:
    """Before the delete POST: "a delete of this server may be in the cloud"."""
    with claim(chain) as (_session, request):
        request.teardown_intent_at = utcnow()
        request.teardown_attempts += 1


def _delete_not_sent(chain: Chain) -> None:
    with claim(chain) as (_session, request):
        request.teardown_intent_at = None
        request.teardown_attempts -= 1


def _wait_deleting(chain: Chain, since) -> Next:
    """A delete is running whose job we do not know: watch the server until it is gone."""
    if utcnow() - as_utc(since) > timedelta(seconds=DEADLINES[JobKind.DELETE]):
        return _delete_failed(chain, TIMEOUT_CODE, "server never finished deleting")
    with claim(chain) as (_session, request):
        advance(request)  # the re-run owns the request
    raise Wait(first_poll(JobKind.DELETE), "server being deleted")


@step_task("bms.poll_teardown_job", Step.TEARDOWN)
def poll_teardown_job(chain: Chain) -> Next | None:
    with claim(chain) as (_session, request):
        if request.state is not S.TEARING_DOWN or not request.teardown_job_id:
            return handoff(request)
        job_id, server_id = request.teardown_job_id, request.server_id
    try:
        job = runtime().client.show_job(job_id)
    except NotFound:
        return _job_forgotten(chain, job_id)
    with claim(chain) as (session, request):
        if request.teardown_job_id != job_id:
            return handoff(request)
        cloud_job = _record(session, request, job)
        if job.outcome is JobOutcome.DONE:
            return _finish(session, request, f"server {server_id} deleted")
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                return _fail(session, request, TIMEOUT_CODE, "delete job timed out")
            advance(request)
        elif request.teardown_attempts < runtime().settings.max_attempts:
            request.teardown_job_id = None  # delete again
            record_note(session, request, f"delete of {server_id} failed ({cloud_job.error_code})")
            return handoff(request, first_poll(JobKind.DELETE))
        else:
            return _fail(session, request, cloud_job.error_code, "delete job failed")
    raise Wait(wait, "delete job running")


def _job_forgotten(chain: Chain, job_id: str) -> Next:
    """The cloud no longer knows the delete job: the server itself tells how it went."""
    with claim(chain) as (_session, request):
        if request.teardown_job_id == job_id:
            request.teardown_job_id, request.teardown_intent_at = None, utcnow()
        return handoff(request)


# -- shared -----------------------------------------------------------------------------------


def _record(session, request: ServerRequest, job) -> CloudJob:
    cloud_job = session.get(CloudJob, job.job_id)
    cloud_job.status, cloud_job.polls = job.status, cloud_job.polls + 1
    cloud_job.begin_time, cloud_job.end_time = job.begin_time, job.end_time
    failure = job.failures[0] if job.failures else None
    if failure is not None:
        cloud_job.error_code, cloud_job.fail_reason = failure.error_code, failure.fail_reason
    elif job.outcome is JobOutcome.FAILED:
        cloud_job.error_code = job.error_code
    request.updated_at = utcnow()  # progress, for the reconciler
    return cloud_job


def _still_running(cloud_job: CloudJob) -> float | None:
    age = utcnow() - as_utc(cloud_job.created_at)
    if age > timedelta(seconds=DEADLINES[cloud_job.kind]):
        return None
    return next_poll(cloud_job.kind, cloud_job.polls)


def _torn_down(chain: Chain, detail: str) -> Next:
    with claim(chain) as (session, request):
        if request.state is not S.TEARING_DOWN:
            return handoff(request)
        return _finish(session, request, detail)


def _finish(session, request: ServerRequest, detail: str) -> Next:
    request.teardown_job_id = request.teardown_intent_at = None
    kept = [a.volume_id for a in request.attachments if a.state in (A.DETACHED, A.KEPT)]
    volumes = f"; volumes kept: {', '.join(kept)}" if kept else ""
    transition(session, request, S.TORN_DOWN, detail=f"{detail}{volumes}")
    return Next(None)


def _delete_failed(chain: Chain, code: str | None, message: str) -> Next:
    with claim(chain) as (session, request):
        if request.state is not S.TEARING_DOWN:
            return handoff(request)
        return _fail(session, request, code, message)


def _fail(session, request: ServerRequest, code: str | None, message: str) -> Next:
    request.teardown_job_id = request.teardown_intent_at = None
    request.teardown_attempts = 0  # a retry (or another teardown) gets a fresh budget
    fail(session, request, Step.TEARDOWN, code, f"server {request.server_id}: {message}")
    return Next(None)
