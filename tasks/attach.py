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
"""

from __future__ import annotations

from datetime import timedelta

from bms.exceptions import BadRequest, CloudTransportError, Conflict, ServerError, Throttled
from models.base import as_utc, utcnow
from models.records import AttachmentState, CloudJob, JobKind, ServerRequest, transition
from models.states import RequestState, Step
from tasks.base import Chain, Next, Wait, advance, claim, fail, handoff, step_task
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.timing import DEADLINES, first_poll
from worker.limiter import NoCapacity
from worker.runtime import runtime

S = RequestState
A = AttachmentState

#: Refusals of an attach that say "not now" rather than "never": the server is busy, the disk
#: is still in use by an attach or detach that is ending.
REFUSALS_WORTH_RETRYING = frozenset({"BMS.1001", "BMS.0103"})


def _due(request: ServerRequest):
    """The attachment to work on: the first one not attached, unless its job is being polled."""
    return next((a for a in request.attachments if a.state is not A.ATTACHED), None)


@step_task("bms.attach_volume", Step.ATTACH)
def attach_volume(chain: Chain) -> Next | None:
    with claim(chain) as (session, request):
        attachment = _due(request)
        if request.state is not S.ATTACHING or attachment is None or attachment.job_id:
            return handoff(request)
        in_cloud_maybe = attachment.intent_at is not None
        if not in_cloud_maybe:
            if attachment.attempt >= runtime().settings.max_attempts:
                return _out_of_attempts(session, request, attachment)
            attachment.state, attachment.intent_at = A.ATTACHING, utcnow()
        target = (attachment.position, request.server_id, attachment.volume_id, attachment.device)
    if in_cloud_maybe:
        settled = _look_at_disk(chain, target, attach_next=True)
        if settled is not None:
            return settled
    return _post_attach(chain, target)


def _post_attach(chain: Chain, target: tuple) -> Next | None:
    position, server_id, volume_id, device = target
    try:
        job_id = runtime().client.attach_volume(server_id, volume_id, device)
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
    return _record_job(chain, position, job_id)


def _record_job(chain: Chain, position: int, job_id: str) -> Next | None:
    # Recorded whatever the token, as a create is: the cloud started this job.
    with claim(chain, owned=False) as (session, request):
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.ATTACH))
        attachment = request.attachments[position]
        if attachment.state is not A.ATTACHING or attachment.job_id:
            return None  # another copy recorded or settled it; its chain goes on
        attachment.job_id, attachment.intent_at = job_id, None
        attachment.attempt += 1
        if not chain.owns(request):
            return None
        return handoff(request, first_poll(JobKind.ATTACH))


def _look_at_disk(chain: Chain, target: tuple, attach_next: bool = False) -> Next | None:
    """After a lost answer: settle the attachment from the disk's status, or ``None`` to attach.

    ``attach_next``: a free disk is attached again at once, so the budget is checked here.
    """
    position, server_id, volume_id, _device = target
    volume = runtime().client.resources.show_volume(volume_id)
    status = volume.get("status")
    here = any(a.get("server_id") == server_id for a in volume.get("attachments") or [])
    wait, progress = None, True
    with claim(chain) as (session, request):
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
    return handoff(request)


def _not_sent(chain: Chain, position: int) -> None:
    """The attach never reached the cloud: no intent left behind."""
    with claim(chain) as (_session, request):
        attachment = request.attachments[position]
        if attachment.state is A.ATTACHING and not attachment.job_id:
            attachment.state, attachment.intent_at = A.PENDING, None


def _count_attempt(chain: Chain, position: int) -> None:
    with claim(chain) as (_session, request):
        request.attachments[position].attempt += 1


def _refused(chain: Chain, target: tuple, exc: BadRequest | Conflict) -> Next | None:
    """The cloud said no. The disk tells whether the refusal was our own earlier attach."""
    position = target[0]
    with claim(chain) as (_session, request):
        attachment = request.attachments[position]
        attachment.attempt += 1
        request.last_error_code = exc.error_code
        request.last_error_message = f"volume {attachment.volume_id}: {exc.message or exc}"
    settled = _look_at_disk(chain, target)
    if settled is not None:
        return settled
    # The disk is free: the refusal was about something else (the server busy, a bad device).
    wait = None
    with claim(chain) as (session, request):
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


def _attach_refused(session, request: ServerRequest, attachment, code, reason: str) -> Next:
    attachment.state, attachment.job_id = A.FAILED, None
    message = f"volume {attachment.volume_id}: {reason}"
    fail(session, request, Step.ATTACH, code, message)
    return Next(None)


def _out_of_attempts(session, request: ServerRequest, attachment) -> Next:
    code = request.last_error_code or "ORCH.ATTEMPTS"
    return _attach_refused(session, request, attachment, code, "no attach attempt left")
