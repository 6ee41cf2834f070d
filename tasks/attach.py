"""Step 3: attach the request's volumes, one at a time, in order (the API has no batch attach).

An attach POST that went through but whose answer was lost is re-sent by a redelivered message;
the cloud refuses it (the volume is in use), and the volume list of the server tells us it is
ours: the attachment is then recorded as done instead of failed.
"""

from __future__ import annotations

from bms.exceptions import BadRequest, CloudTransportError, Conflict, Throttled
from models.records import AttachmentState, CloudJob, JobKind, transition
from models.states import RequestState, Step
from tasks.base import Next, Wait, claim, fail, step_task
from tasks.errors import is_retryable
from tasks.plan import next_signature
from tasks.timing import first_poll
from worker.limiter import NoCapacity
from worker.runtime import runtime

S = RequestState


@step_task("bms.attach_volume", Step.ATTACH)
def attach_volume(*, request_id: str, fence: int) -> Next | None:
    with claim(request_id, fence) as (_session, request):
        attachment = next(
            (a for a in request.attachments if a.state is AttachmentState.PENDING), None
        )
        if request.state is not S.ATTACHING or attachment is None:
            return Next(next_signature(request))
        attachment.attempt += 1
        position, server_id = attachment.position, request.server_id
        volume_id, device = attachment.volume_id, attachment.device
    client = runtime().client
    try:
        job_id = client.attach_volume(server_id, volume_id, device)
    except (NoCapacity, Throttled):
        _not_sent(request_id, fence, position)
        raise
    except CloudTransportError as exc:
        if not exc.outcome_unknown:
            _not_sent(request_id, fence, position)
        raise
    except (BadRequest, Conflict) as exc:
        attached = {a.get("volumeId") for a in client.list_volume_attachments(server_id)}
        return _refused(request_id, fence, position, volume_id in attached, exc)
    # Recorded whatever the fence, as a create is: the cloud started this job.
    with claim(request_id, None) as (session, request):
        attachment = request.attachments[position]
        if attachment.state is not AttachmentState.PENDING:
            return None
        attachment.state, attachment.job_id = AttachmentState.ATTACHING, job_id
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.ATTACH))
        owner = request.fence == fence
        return Next(next_signature(request, first_poll(JobKind.ATTACH)) if owner else None)


def _not_sent(request_id: str, fence: int, position: int) -> None:
    """The attach never reached the cloud (a quota said wait): it spends no attempt."""
    with claim(request_id, fence) as (_session, request):
        request.attachments[position].attempt -= 1


def _refused(request_id: str, fence: int, position: int, ours: bool, exc) -> Next:
    wait = None
    with claim(request_id, fence) as (session, request):
        attachment = request.attachments[position]
        if ours:
            attachment.state = AttachmentState.ATTACHED
            if all(a.state is AttachmentState.ATTACHED for a in request.attachments):
                transition(session, request, S.TAGGING, detail="volumes attached")
            return Next(next_signature(request))
        message = f"volume {attachment.volume_id}: {exc.message or exc}"
        request.last_error_code, request.last_error_message = exc.error_code, message
        # A permanent refusal of a first attach (BMS.0103 the volume is in use) is someone
        # else's volume: no retry changes that. After a lost answer an earlier attach of ours
        # may still be running (the volume is not listed yet): look again later.
        ours_may_run = attachment.attempt > 1
        if attachment.attempt < runtime().settings.max_attempts and (
            ours_may_run or exc.transient or is_retryable(exc.error_code, from_job=False)
        ):
            wait = first_poll(JobKind.ATTACH)
        else:
            attachment.state = AttachmentState.FAILED
            fail(session, request, Step.ATTACH, exc.error_code, message)
            return Next(None)
    raise Wait(wait, "attach refused")
