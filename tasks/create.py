"""Step 1: create the server, at most once.

A duplicate POST makes a second, billed bare metal server, so the row records the intent and a
marker before the POST. The server is created under its final name (no rename call) and carries
the marker in its metadata. When a run finds an intent but no job id (the answer was lost:
worker killed, connection dropped, or a second copy of this step is running), it lists the
servers by name and adopts the one whose metadata holds the marker instead of creating another.
Markers come from a serial that never resets, so a marker never matches a server of an earlier
attempt or retry cycle.

Servers this step learns of but will not use (a second match of the marker, a create answered
after the request moved on) are queued as strays and deleted by the sweeper, never forgotten.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import String, bindparam, cast, insert, update

from bms.exceptions import BadRequest, CloudTransportError, Throttled
from models.base import as_utc, utcnow
from models.db import session_scope
from models.outbox import add_event
from models.records import (
    CloudJob,
    JobKind,
    ServerRequest,
    StrayServer,
    record_note,
    transition,
)
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState, Step
from tasks.base import Chain, Next, Wait, advance, claim, fail, handoff, step_task
from tasks.errors import is_retryable
from tasks.plan import is_plain, poll_signature, row_is_plain
from tasks.timing import create_backoff, first_poll
from worker import fault_hooks
from worker.limiter import NoCapacity
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.create")
S = RequestState


def marker_for(request: ServerRequest) -> str:
    """Unique per request and create attempt ever made."""
    return f"o{request.id.hex[:12]}a{request.create_serial}"


def create_body(request: ServerRequest) -> dict:
    """The create body: the requested name, and the marker in the metadata."""
    return _body(request.spec, request.name, request.create_marker)


def _body(spec: dict, name: str, marker: str) -> dict:
    body = dict(spec["create_body"])
    body["name"] = name
    body["metadata"] = {**body["metadata"], MARKER_METADATA_KEY: marker}
    return body


# Capacity first: a create that must wait for quota learns it before it touches its row.
@step_task("bms.create_server", Step.CREATE, capacity_first=True)
def create_server(chain: Chain) -> Next | None:
    started = _start_pending(chain)
    if started is not None:
        body, marker = started
        return post_create(chain, body, marker, True, ONE_SERVER)
    with claim(chain) as (session, request):
        in_cloud_maybe = request.create_intent_at is not None
        if request.state not in (S.PENDING, S.CREATING) and not (
            request.state is S.CANCELLED and in_cloud_maybe
        ):
            return handoff(request)
        if request.state is S.PENDING:
            transition(session, request, S.CREATING, detail="dispatched")
        if not in_cloud_maybe:
            request.attempt += 1
            request.create_serial += 1
            request.create_marker = marker_for(request)
            request.create_intent_at = utcnow()
        body = create_body(request)
        marker = request.create_marker
        chain.plain = row_is_plain(request)
    if in_cloud_maybe:
        adopted = _adopt_by_marker(chain, body["name"], marker)
        if adopted is not None:
            return adopted
    return post_create(chain, body, marker, not in_cloud_maybe, ONE_SERVER)


#: The rows' columns, for statements built once (Core, on the tables: no ORM compile step, and
#: the statement's cache key is computed once, not per run; issue 11).
_R = ServerRequest.__table__.c
#: The usual first run's UPDATE (see :func:`_start_pending`). The marker is made as marker_for
#: makes it, from the serial the UPDATE gives the row.
_START_PENDING = (
    update(ServerRequest.__table__)
    .where(_R.id == bindparam("request_id"), _R.fence == bindparam("token"))
    .where(_R.state == S.PENDING, _R.create_intent_at.is_(None), _R.group_id.is_(None))
    .values(
        state=S.CREATING,
        attempt=_R.attempt + 1,
        create_serial=_R.create_serial + 1,
        create_marker=bindparam("marker_prefix", type_=String) + cast(_R.create_serial + 1, String),
        create_intent_at=bindparam("intent_at"),
        updated_at=bindparam("now"),
    )
    .returning(_R.name, _R.spec, _R.create_marker)
)


def _start_pending(chain: Chain) -> tuple[dict, str] | None:
    """The usual first run, in two statements: a PENDING request this message owns, no create
    under way, becomes CREATING with a new attempt, marker and intent in one conditional UPDATE
    (returning what the POST needs), and its event is added. ``None``: anything else (a re-run,
    a cancel, a stale message), which the claim sorts out."""
    request_id = uuid.UUID(chain.request_id)
    now = utcnow()
    params = {"request_id": request_id, "token": chain.fence, "intent_at": now, "now": now,
              "marker_prefix": f"o{request_id.hex[:12]}a"}  # fmt: skip
    with session_scope(runtime().sessions) as session:
        row = session.execute(_START_PENDING, params).one_or_none()
        if row is None:
            return None
        name, spec, marker = row
        add_event(session, request_id, S.PENDING, S.CREATING, "dispatched", now)
    # Made under its requested name: serial 1 and no group (the UPDATE's conditions).
    chain.plain = is_plain(spec, name, create_serial=1, cloud_name=None)
    return _body(spec, name, marker), marker


def _live_with_marker(name: str, marker: str) -> list[dict]:
    """Live servers named like ``name`` whose metadata holds ``marker``."""
    return [
        server
        for server in runtime().client.list_servers(name=name).servers
        if server.get("metadata", {}).get(MARKER_METADATA_KEY) == marker
        and server.get("status") != "DELETED"
    ]


def _adopt_by_marker(chain: Chain, name: str, marker: str) -> Next | None:
    """Look for a server an earlier run created; adopt it, or wait out the listing delay.

    Returns what to hand on when the look-up settles the matter, ``None`` to create now.
    """
    found = _live_with_marker(name, marker)
    wait = None
    with claim(chain) as (session, request):
        if request.create_marker != marker:
            return handoff(request)
        if found:
            return _adopt(session, request, found)
        grace = timedelta(seconds=runtime().settings.create_lookup_grace_seconds)
        intent_age = utcnow() - as_utc(request.create_intent_at)
        if intent_age < grace:
            # A server may not be listed yet right after its create: look again before POSTing.
            wait = (grace - intent_age).total_seconds()
            advance(request)
        elif request.state is S.CANCELLED:
            request.create_intent_at = None  # nothing was made: a cancel has nothing to undo
            record_note(session, request, f"no server with marker {marker}: nothing to delete")
            return handoff(request)
        else:
            # A new POST with the same marker: its intent starts now, in the transaction that
            # decided it, so that a second copy deciding next sees it and waits.
            request.create_intent_at = utcnow()
    if wait is not None:
        raise Wait(wait, "create may still appear", progress=False)
    log.info("%s: marker %s not found after the grace period, creating", chain.request_id, marker)
    return None


def _adopt(session, request: ServerRequest, found: list[dict]) -> Next:
    """Take the first server with the marker; any other is a duplicate, queued for deletion."""
    server_id = found[0]["id"]
    for extra in found[1:]:
        _stray(session, request, server_id=extra["id"], reason=f"second server with marker "
               f"{request.create_marker}")  # fmt: skip
    request.create_intent_at = None
    if request.state is S.CANCELLED:
        request.cleanup_server_id, request.cleanup_attempts = server_id, 0
        record_note(session, request, f"server {server_id} found after the cancel: deleting it")
        return handoff(request)
    request.server_id, request.job_id = server_id, None
    request.wait_deadline_at = None  # set by the first wait of the adopted server
    transition(session, request, S.BUILDING, detail=f"adopted server {server_id}")
    return handoff(request)


def _stray(session, request: ServerRequest, *, reason: str, **ids: str) -> None:
    session.add(StrayServer(request_id=request.id, reason=reason, **ids))
    record_note(session, request, f"{reason}: queued for deletion")


@dataclass(frozen=True)
class CreateOutcomes:
    """What a create path does with each outcome of its POST (the one-server path here, the
    count group's in ``tasks.group_create``): each takes the chain first."""

    #: The call certainly did not reach the cloud: ``(chain, new_attempt)``.
    not_sent: Callable[[Chain, bool], None]
    #: The cloud refused it outright, nothing made: ``(chain, exc)``.
    refused: Callable[[Chain, BadRequest], Next | None]
    #: The cloud accepted it: ``(chain, marker, job_id)``.
    record_job: Callable[[Chain, str, str], Next | None]


def post_create(
    chain: Chain, body: dict, marker: str, new_attempt: bool, outcomes: CreateOutcomes
) -> Next | None:
    """POST one create (one server, or a count) and hand its outcome to ``outcomes``."""
    try:
        result = runtime().client.create_servers(body)
    except (NoCapacity, Throttled):
        outcomes.not_sent(chain, new_attempt)  # held back by a quota, ours or the cloud's
        raise
    except CloudTransportError as exc:
        if not exc.outcome_unknown:
            outcomes.not_sent(chain, new_attempt)
        raise  # with the intent kept, the retry looks the marker up before any new POST
    except BadRequest as exc:
        return outcomes.refused(chain, exc)
    fault_hooks.after_create_post()
    return outcomes.record_job(chain, marker, result.job_id)


def _record_job(chain: Chain, marker: str, job_id: str) -> Next | None:
    recorded = _record_job_at_once(chain, marker, job_id)
    if recorded is not None:
        return recorded
    # Recorded whatever the token: the cloud accepted a create, and that must not be lost
    # because another message took the request over meanwhile.
    with claim(chain, owned=False) as (session, request):
        session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.CREATE))
        if request.create_marker != marker or request.job_id or request.server_id:
            # Another run got there first (it adopted or recorded a server): this one's is extra.
            _stray(session, request, create_job_id=job_id, reason=f"create job {job_id} "
                   "answered after the request had moved on")  # fmt: skip
            return None
        request.job_id = job_id
        request.create_intent_at = None
        if request.state is S.CREATING:
            transition(session, request, S.BUILDING, detail=f"create job {job_id}")
        if not chain.owns(request):
            return None  # the owner learns of the job from the row
        # A cancelled request watches its create to its end too, then deletes the server.
        return handoff(request, first_poll(JobKind.CREATE))


#: The usual answer's UPDATE (see :func:`_record_job_at_once`).
_RECORD_JOB = (
    update(ServerRequest.__table__)
    .where(_R.id == bindparam("request_id"), _R.fence == bindparam("token"))
    .where(_R.state == S.CREATING, _R.create_marker == bindparam("marker"))
    .where(_R.job_id.is_(None), _R.server_id.is_(None), _R.cleanup_server_id.is_(None))
    .values(
        state=S.BUILDING,
        job_id=bindparam("new_job_id"),
        create_intent_at=None,
        fence=_R.fence + 1,  # the hand-off to the poll (advance)
        restarts=0,
        updated_at=bindparam("now"),
    )
    .returning(_R.fence)
)
_ADD_JOB = insert(CloudJob.__table__)


def _record_job_at_once(chain: Chain, marker: str, job_id: str) -> Next | None:
    """The usual answer, in three statements: the request this message owns, CREATING with this
    create's marker and nothing else under way, becomes BUILDING on ``job_id`` and is handed to
    its poll in one conditional UPDATE; the job's row and the event are added. ``None``:
    anything else, which the claim of :func:`_record_job` sorts out (nothing was written)."""
    request_id = uuid.UUID(chain.request_id)
    now = utcnow()
    params = {"request_id": request_id, "token": chain.fence, "marker": marker,
              "new_job_id": job_id, "now": now}  # fmt: skip
    with session_scope(runtime().sessions) as session:
        fence = session.execute(_RECORD_JOB, params).scalar_one_or_none()
        if fence is None:
            return None
        job = {"job_id": job_id, "request_id": request_id, "kind": JobKind.CREATE}
        session.execute(_ADD_JOB, job | {"created_at": now, "updated_at": now})
        add_event(session, request_id, S.CREATING, S.BUILDING, f"create job {job_id}", now)
    chain.fence = fence  # committed: the row now expects this token
    poll = Chain(chain.request_id, fence, job_id, chain.plain)
    return Next(poll_signature(poll, first_poll(JobKind.CREATE)))


def _not_sent(chain: Chain, new_attempt: bool) -> None:
    """The create certainly did not reach the cloud: no intent, and no attempt spent on it."""
    with claim(chain) as (_session, request):
        request.create_intent_at = None
        if new_attempt:
            # A quota wait is not a failed attempt: the budget is for what the cloud did.
            request.attempt -= 1
            request.create_marker = None


def _refused(chain: Chain, exc: BadRequest) -> Next | None:
    """The cloud refused the create outright: nothing was made."""
    retry_in = None
    with claim(chain) as (session, request):
        request.create_intent_at = None
        if request.state is S.CANCELLED:
            record_note(session, request, f"create refused ({exc.error_code}): nothing made")
            return handoff(request)
        attempts_left = request.attempt < runtime().settings.max_attempts
        if is_retryable(exc.error_code, from_job=False) and attempts_left:
            request.last_error_code, request.last_error_message = exc.error_code, exc.message
            retry_in = create_backoff(request.attempt)
            advance(request)
        else:
            fail(session, request, Step.CREATE, exc.error_code, exc.message or str(exc))
            return None
    # Raised after the transaction: the cleared intent and the error must be kept.
    raise Wait(retry_in, f"create refused: {exc.error_code}")


#: The one-server path's outcomes of its POST.
ONE_SERVER = CreateOutcomes(not_sent=_not_sent, refused=_refused, record_job=_record_job)
