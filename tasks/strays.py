"""The stray sweeper: deletes the servers the orchestrator made but will not use.

A stray is queued by the step that learns of it (a create answered after the request moved on,
a second server with a request's marker, a cancelled create whose watch broke, a cancelled
create given up while its answer was lost). Only its create job, or only its marker, may be
known at first. Each sweep (a beat task on the control queue) moves every stray one stage on —
job read (or the request's name listed) for its servers, delete sent, delete job read — through
the same limiter
as every other call, and notes each stage in the request's timeline. A stray that keeps failing
is abandoned after a bounded number of tries, with its server named for an operator.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from sqlalchemy import select

from bms.exceptions import CloudError, NotFound, Throttled
from bms.jobs import JobOutcome
from models.base import as_utc, utcnow
from models.db import session_scope
from models.records import JobKind, ServerRequest, StrayServer, StrayState, record_note
from models.spec import MARKER_METADATA_KEY
from tasks.timing import DEADLINES
from worker.limiter import NoCapacity
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.strays")
#: Strays handled per sweep, so that one sweep stays short.
SWEEP_BATCH = 50
#: Failed reads or deletes of one stray before it is abandoned to an operator.
MAX_STRAY_ATTEMPTS = 5
OPEN_STATES = (StrayState.PENDING, StrayState.DELETING)


@shared_task(name="bms.sweep_strays", ignore_result=True, acks_late=True)
def sweep_strays() -> int:
    """Beat task: move every open stray one stage on; returns how many were looked at."""
    with session_scope(runtime().sessions) as session:
        query = select(StrayServer.id).where(StrayServer.state.in_(OPEN_STATES))
        stray_ids = list(session.scalars(query.order_by(StrayServer.updated_at).limit(SWEEP_BATCH)))
    for stray_id in stray_ids:
        try:
            sweep_one(stray_id)
        except (NoCapacity, Throttled):
            break  # no quota now: the next sweep goes on
        except CloudError as exc:
            _note_failure(stray_id, str(exc))
        except Exception as exc:  # an unreadable answer: counted, so it cannot stop the sweep
            log.exception("stray %s: unexpected error", stray_id)
            _note_failure(stray_id, f"{type(exc).__name__}: {exc}")
    return len(stray_ids)


def sweep_one(stray_id: int) -> None:
    """One stage of one stray: its job read, its delete sent, or its delete job read."""
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        state, server_id, marker = stray.state, stray.server_id, stray.marker
        create_job_id, delete_job_id = stray.create_job_id, stray.delete_job_id
        name = session.get(ServerRequest, stray.request_id).name
    client = runtime().client
    if state is StrayState.DELETING:
        _delete_job_read(stray_id, client.show_job(delete_job_id))
    elif server_id is None and create_job_id is None:
        _marker_listed(stray_id, marker, client.list_servers(name=name).servers)
    elif server_id is None:
        _create_job_read(stray_id, client.show_job(create_job_id))
    else:
        try:
            job_id = client.delete_servers([server_id])
        except NotFound:
            _finish(stray_id, StrayState.DELETED, f"stray server {server_id} already gone")
            return
        _update(stray_id, state=StrayState.DELETING, delete_job_id=job_id)


def _create_job_read(stray_id: int, job) -> None:
    if job.outcome is JobOutcome.RUNNING:
        with session_scope(runtime().sessions) as session:
            stray = session.get(StrayServer, stray_id)
            deadline = as_utc(stray.created_at) + timedelta(seconds=DEADLINES[JobKind.CREATE])
            if utcnow() > deadline:
                _close(session, stray, StrayState.ABANDONED, "its create job never ended")
        return
    server_ids = [sub.server_id for sub in job.sub_jobs if sub.server_id] or (
        [job.server_id] if job.server_id else []
    )
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        if not server_ids:
            _close(session, stray, StrayState.DELETED, f"create job {job.job_id} made no server")
            return
        _found(session, stray, server_ids, f"stray create job {job.job_id}")


def _marker_listed(stray_id: int, marker: str, servers: list[dict]) -> None:
    """The servers listed under the request's name: the ones with the marker are the stray's."""
    server_ids = [
        server["id"]
        for server in servers
        if server.get("metadata", {}).get(MARKER_METADATA_KEY) == marker
        and server.get("status") != "DELETED"
    ]
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        if server_ids:
            _found(session, stray, server_ids, f"stray create with marker {marker}")
            return
        # A server is listed a little after its create: only past the look-up grace does
        # "none listed" mean "none made".
        grace = timedelta(seconds=runtime().settings.create_lookup_grace_seconds)
        if utcnow() > as_utc(stray.created_at) + grace:
            _close(session, stray, StrayState.DELETED, f"no server has marker {marker}")


def _found(session, stray: StrayServer, server_ids: list[str], source: str) -> None:
    """The stray's servers are known: it takes the first, a new stray each of the others."""
    stray.server_id = server_ids[0]
    for extra in server_ids[1:]:
        session.add(StrayServer(request_id=stray.request_id, server_id=extra, reason=stray.reason))
    _note(session, stray, f"{source} made {', '.join(server_ids)}")


def _delete_job_read(stray_id: int, job) -> None:
    if job.outcome is JobOutcome.RUNNING:
        with session_scope(runtime().sessions) as session:
            # Nothing writes a stray while its delete runs: its last write dates the delete.
            since = as_utc(session.get(StrayServer, stray_id).updated_at)
        if utcnow() > since + timedelta(seconds=DEADLINES[JobKind.DELETE]):
            _note_failure(stray_id, f"delete job {job.job_id} never ended")
        return
    if job.outcome is JobOutcome.DONE:
        _finish(stray_id, StrayState.DELETED, None)
        return
    _note_failure(stray_id, f"delete job {job.job_id} failed ({job.error_code})")


def _note_failure(stray_id: int, why: str) -> None:
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        stray.attempts += 1
        if stray.state is StrayState.DELETING:
            stray.state, stray.delete_job_id = StrayState.PENDING, None  # delete again
        if stray.attempts >= MAX_STRAY_ATTEMPTS:
            _close(session, stray, StrayState.ABANDONED, why)


def _update(stray_id: int, **fields) -> None:
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        for name, value in fields.items():
            setattr(stray, name, value)


def _finish(stray_id: int, state: StrayState, detail: str | None) -> None:
    with session_scope(runtime().sessions) as session:
        stray = session.get(StrayServer, stray_id)
        _close(session, stray, state, detail)


def _close(session, stray: StrayServer, state: StrayState, detail: str | None) -> None:
    stray.state = state
    server = stray.server_id or (
        f"of create job {stray.create_job_id}"
        if stray.create_job_id
        else f"with marker {stray.marker}"
    )
    if state is StrayState.DELETED:
        _note(session, stray, detail or f"stray server {server} deleted")
    else:
        log.error("stray server %s abandoned: %s; delete it by hand", server, detail)
        _note(session, stray, f"stray server {server} not deleted ({detail}): delete it by hand")


def _note(session, stray: StrayServer, detail: str) -> None:
    request = session.get(ServerRequest, stray.request_id)
    record_note(session, request, detail)
