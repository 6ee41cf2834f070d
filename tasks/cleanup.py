"""Delete a failed or cancelled server before the request goes on (or for good).

Used when a create job failed (the next attempt starts clean, and no failed server is left
billed) and when a request is cancelled after its server was made.
"""

from __future__ import annotations

import logging

from bms.exceptions import CloudAPIError, NotFound
from models.records import CloudJob, JobKind, record_note
from models.states import RequestState, Step
from tasks.base import Next, claim, step_task
from tasks.plan import next_signature
from tasks.timing import create_backoff
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.cleanup")


@step_task("bms.delete_server", Step.CREATE)
def delete_server(*, request_id: str, fence: int) -> Next | None:
    with claim(request_id, fence) as (_session, request):
        server_id = request.cleanup_server_id
        if not server_id:
            return Next(next_signature(request))
    job_id, problem = None, None
    try:
        job_id = runtime().client.delete_servers([server_id])
    except NotFound:
        problem = "already gone"
    except CloudAPIError as exc:
        if exc.transient:
            raise
        # A refused delete is recorded and not retried forever; the operator sees it.
        problem = f"delete refused: {exc.error_code} {exc.message}"
        log.warning("%s: server %s %s", request_id, server_id, problem)
    with claim(request_id, fence) as (session, request):
        request.cleanup_server_id = None
        if job_id:
            session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.DELETE))
        detail = f"deleted server {server_id}" + (f" ({problem})" if problem else "")
        record_note(session, request, detail)
        backoff = create_backoff(request.attempt) if request.state is RequestState.CREATING else 0
        return Next(next_signature(request, countdown=backoff))
