"""Step 1: create the server, at most once.

A duplicate POST makes a second, billed bare metal server, so the row records the intent and a
marker before the POST, and the server carries the marker in its name and metadata. When a run
finds an intent but no job id (the answer was lost: worker killed, connection dropped), it looks
the marker up in the cloud and adopts the server it finds instead of creating another.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bms.exceptions import BadRequest, CloudTransportError, Throttled
from models.base import as_utc, utcnow
from models.records import CloudJob, JobKind, ServerRequest, transition
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState, Step
from tasks.base import Next, Wait, claim, fail, step_task
from tasks.errors import is_retryable
from tasks.plan import next_signature
from tasks.timing import create_backoff, first_poll
from worker import fault_hooks
from worker.limiter import NoCapacity
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.create")
S = RequestState


def marker_for(request: ServerRequest) -> str:
    """Unique per request and attempt, short enough to ride in the server name."""
    return f"o{request.id.hex[:12]}a{request.attempt}"


def create_name(name: str, marker: str) -> str:
    """The name the server is created with; the finalize stage renames it to ``name``."""
    return f"{name[: 62 - len(marker)]}-{marker}"


def create_body(request: ServerRequest) -> dict:
    body = dict(request.spec["create_body"])
    body["name"] = create_name(request.name, request.create_marker)
    body["metadata"] = {**body["metadata"], MARKER_METADATA_KEY: request.create_marker}
    return body


@step_task("bms.create_server", Step.CREATE)
def create_server(*, request_id: str, fence: int) -> Next | None:
    with claim(request_id, fence) as (session, request):
        if request.state is S.CANCELLED and request.create_intent_at is None:
            return Next(next_signature(request))
        if request.state not in (S.PENDING, S.CREATING, S.CANCELLED):
            return Next(next_signature(request))
        if request.state is S.PENDING:
            transition(session, request, S.CREATING, detail="dispatched")
        answer_lost = request.create_intent_at is not None
        if not answer_lost:
            request.attempt += 1
            request.create_marker = marker_for(request)
            request.create_intent_at = utcnow()
        body = create_body(request)
        marker, cancelled = request.create_marker, request.state is S.CANCELLED
    if answer_lost:
        adopted = _adopt_by_marker(request_id, fence, marker)
        if adopted is not None or cancelled:
            return adopted  # a cancelled request never sends a create
        _touch_intent(request_id, fence)
    return _post_create(request_id, fence, body, marker, new_attempt=not answer_lost)


def _adopt_by_marker(request_id: str, fence: int, marker: str) -> Next | None:
    """Look for a server an earlier run created; adopt it, or wait out the listing delay."""
    found = [
        server
        for server in runtime().client.list_servers(name=marker).servers
        if server.get("metadata", {}).get(MARKER_METADATA_KEY) == marker
        and server.get("status") != "DELETED"
    ]
    wait = None
    with claim(request_id, fence) as (session, request):
        if found:
            request.create_intent_at = None
            if request.state is S.CANCELLED:
                request.cleanup_server_id = found[0]["id"]
                return Next(next_signature(request))
            request.server_id, request.job_id = found[0]["id"], None
            transition(session, request, S.BUILDING, detail=f"adopted server {found[0]['id']}")
            return Next(next_signature(request))
        grace = timedelta(seconds=runtime().settings.create_lookup_grace_seconds)
        intent_age = utcnow() - as_utc(request.create_intent_at)
        if intent_age < grace:
            # A server may not be listed yet right after its create: look again before POSTing.
            wait = (grace - intent_age).total_seconds()
        elif request.state is S.CANCELLED:
            request.create_intent_at = None
            return Next(None)
    if wait is not None:
        raise Wait(wait, "create may still appear")
    log.info("%s: marker %s not found after the grace period, creating", request_id, marker)
    return None


def _touch_intent(request_id: str, fence: int) -> None:
    """A new POST with the same marker: its intent starts now."""
    with claim(request_id, fence) as (_session, request):
        request.create_intent_at = utcnow()


def _post_create(
    request_id: str, fence: int, body: dict, marker: str, new_attempt: bool
) -> Next | None:
    try:
        result = runtime().client.create_servers(body)
    except (NoCapacity, Throttled):
        _not_sent(request_id, fence, new_attempt)  # held back by a quota, ours or the cloud's
        raise
    except CloudTransportError as exc:
        if not exc.outcome_unknown:
            _not_sent(request_id, fence, new_attempt)
        raise  # with the intent kept, the retry looks the marker up before any new POST
    except BadRequest as exc:
        return _refused(request_id, fence, exc)
    fault_hooks.after_create_post()
    # Recorded whatever the fence: the cloud accepted a create, and that must not be lost
    # because another chain took the request over meanwhile.
    with claim(request_id, None) as (session, request):
        if request.create_marker != marker or request.job_id or request.server_id:
            log.warning("%s: create job %s answered too late to record", request_id, result.job_id)
            return None
        request.job_id = result.job_id
        request.create_intent_at = None
        session.add(CloudJob(job_id=result.job_id, request_id=request.id, kind=JobKind.CREATE))
        if request.state is S.CREATING:
            transition(session, request, S.BUILDING, detail=f"create job {result.job_id}")
        owner = request.fence == fence
        return Next(next_signature(request, first_poll(JobKind.CREATE)) if owner else None)


def _not_sent(request_id: str, fence: int, new_attempt: bool) -> None:
    """The create certainly did not reach the cloud: no intent, and no attempt spent on it."""
    with claim(request_id, fence) as (_session, request):
        request.create_intent_at = None
        if new_attempt:
            # A quota wait is not a failed attempt: the budget is for what the cloud did.
            request.attempt -= 1
            request.create_marker = None


def _refused(request_id: str, fence: int, exc: BadRequest) -> Next | None:
    """The cloud refused the create outright: nothing was made."""
    retry_in = None
    with claim(request_id, fence) as (session, request):
        request.create_intent_at = None
        attempts_left = request.attempt < runtime().settings.max_attempts
        if is_retryable(exc.error_code, from_job=False) and attempts_left:
            request.last_error_code, request.last_error_message = exc.error_code, exc.message
            retry_in = create_backoff(request.attempt)
        else:
            fail(session, request, Step.CREATE, exc.error_code, exc.message or str(exc))
    if retry_in is not None:
        # Raised after the transaction: the cleared intent and the error must be kept.
        raise Wait(retry_in, f"create refused: {exc.error_code}")
    return None
