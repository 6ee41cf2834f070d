"""The chain, read off a request's row: which step comes next.

The chain is never stored in the broker. Each step, after committing its result, sends the
step this module names from the row; dispatch, retry and the reconciler start a chain the same
way. So a chain that Celery lost (a dropped step, a purged queue) is rebuilt from the row alone.
"""

from __future__ import annotations

import time

from celery.canvas import Signature

from models.records import AttachmentState, ServerRequest
from models.states import RequestState, Step
from worker.app import app

S = RequestState

#: Each step task and the step a request ended there is FAILED at (a retry resumes there).
STEP_OF_TASK: dict[str, Step] = {
    "bms.create_server": Step.CREATE,
    "bms.create_group": Step.CREATE,
    "bms.poll_create_job": Step.POLL_CREATE,
    "bms.poll_group_job": Step.POLL_CREATE,
    "bms.wait_server_built": Step.POLL_CREATE,
    "bms.attach_volume": Step.ATTACH,
    "bms.poll_attach_job": Step.ATTACH,
    "bms.apply_tags": Step.TAG,
    "bms.rename_server": Step.RENAME,
    "bms.finalize": Step.FINALIZE,
    "bms.delete_server": Step.CREATE,
    "bms.poll_delete_job": Step.CREATE,
    "bms.detach_volume": Step.TEARDOWN,
    "bms.poll_detach_job": Step.TEARDOWN,
    "bms.teardown_server": Step.TEARDOWN,
    "bms.poll_teardown_job": Step.TEARDOWN,
}


def next_task_name(request: ServerRequest) -> str | None:
    """The task that moves ``request`` on, or ``None`` when nothing is left to do."""
    if request.cleanup_server_id:
        # A failed or cancelled server goes before anything else happens to the request.
        return "bms.poll_delete_job" if request.cleanup_job_id else "bms.delete_server"
    state = request.state
    if state is S.TEARING_DOWN:
        return _teardown_task(request)
    if state in (S.PENDING, S.CREATING) or (state is S.CANCELLED and request.create_intent_at):
        # A cancelled request whose create may be in the cloud looks for it (to delete it).
        return "bms.create_group" if _created_by_group(request) else "bms.create_server"
    if state is S.BUILDING or (state is S.CANCELLED and request.job_id):
        # A cancelled create still in flight is watched to its end, then deleted.
        return _building_task(request)
    if state is S.ATTACHING:
        return _attaching_task(request)
    if state is S.TAGGING:
        return _tagging_task(request)
    return None


def _created_by_group(request: ServerRequest) -> bool:
    """A member of a count create not yet made (every PENDING member is in its group's call),
    or in a call that may be in the cloud, or one whose group is done with it (failed, to be
    retried) with nothing under way of its own: ``bms.create_group`` creates it again with
    its peers, or on its own. A create of its own already under way stays its own."""
    if request.group_id is None or request.state not in (S.PENDING, S.CREATING):
        return False
    if request.state is S.PENDING or request.cloud_name is not None:
        return True
    return request.create_intent_at is None and not (request.job_id or request.server_id)


def _building_task(request: ServerRequest) -> str | None:
    if request.job_id:
        return "bms.poll_create_job"
    if request.server_id:
        # Adopted by marker after a lost answer: there is a server but no job id to poll.
        return "bms.wait_server_built"
    if request.group_id and request.cloud_name:
        # Made by its group's count create: the group's one poll hands it on.
        return "bms.poll_group_job"
    return None


def _attaching_task(request: ServerRequest) -> str | None:
    for attachment in request.attachments:
        if attachment.state is AttachmentState.ATTACHED:
            continue
        if attachment.state is AttachmentState.ATTACHING and attachment.job_id:
            return "bms.poll_attach_job"
        return "bms.attach_volume"
    return None


def _teardown_task(request: ServerRequest) -> str:
    """Each volume detached (its job watched), then the server deleted (its job watched)."""
    for attachment in request.attachments:
        if attachment.state is AttachmentState.DETACHING and attachment.job_id:
            return "bms.poll_detach_job"
        if attachment.state in (AttachmentState.TO_DETACH, AttachmentState.DETACHING):
            return "bms.detach_volume"
    return "bms.poll_teardown_job" if request.teardown_job_id else "bms.teardown_server"


def _tagging_task(request: ServerRequest) -> str:
    if request.step_done is None:
        return "bms.apply_tags"
    if request.step_done is Step.TAG:
        return "bms.rename_server"
    return "bms.finalize"


def is_plain(spec: dict, name: str, create_serial: int, cloud_name: str | None) -> bool:
    """Whether a request's work after its create is the read-back alone: no tag to apply, no
    volume to attach (the spec lists none), and its server made under its requested name (see
    ``tasks.finish.stage_of``). Its create poll may then end it ACTIVE at once."""
    no_rename = create_serial > 0 and cloud_name in (None, name)
    return not spec.get("tags") and spec.get("attach_volumes") == [] and no_rename


def row_is_plain(request: ServerRequest) -> bool:
    """:func:`is_plain` of a loaded row."""
    return is_plain(request.spec, request.name, request.create_serial, request.cloud_name)


def next_signature(request: ServerRequest, countdown: float | None = None) -> Signature | None:
    """The next step as an immutable signature carrying the request id and fencing token."""
    name = next_task_name(request)
    if name is None:
        return None
    return step_signature(name, request, countdown)


def poll_signature(chain, countdown: float | None = None) -> Signature:
    """``bms.poll_create_job`` of a request just handed to it (``chain``: its id, the new
    token and the job), as :func:`step_signature` makes it from the row."""
    carried = {"job_id": chain.job_id, **({"plain": True} if chain.plain else {})}
    return _signature("bms.poll_create_job", chain.request_id, chain.fence, countdown, **carried)


def chain_signature(name: str, chain, countdown: float | None = None) -> Signature:
    """The step ``name`` for ``chain`` (a request id and the token it owns), as
    :func:`step_signature` makes it from the row, for a step that carries nothing else."""
    return _signature(name, chain.request_id, chain.fence, countdown)


def step_signature(name: str, request: ServerRequest, countdown: float | None = None) -> Signature:
    """The step ``name`` of ``request`` as an immutable signature (its id and fencing token)."""
    # What the poll needs: it calls the cloud first, then claims the row once.
    carried = {}
    if name == "bms.poll_create_job":
        carried["job_id"] = request.job_id
        # A cancelled request's poll reads no server: it deletes it.
        if request.state is S.BUILDING and row_is_plain(request):
            carried["plain"] = True
    return _signature(name, str(request.id), request.fence, countdown, **carried)


def _signature(
    name: str, request_id: str, fence: int, countdown: float | None, **carried
) -> Signature:
    # alive_at: when the row was last touched (this hand-off), for the wrapper's keep-alive.
    kwargs = {"request_id": request_id, "fence": fence, "alive_at": time.time(), **carried}
    # ignore_result: a sender that does not know the task (the API, the CLI) would otherwise
    # subscribe to a result that never comes, once per message.
    options = {"countdown": countdown} if countdown else {}
    # What Flower shows of the message, made here: Celery's own (saferepr, written for any
    # object) was 2% of a pool child's CPU (issue 11). These kwargs are a few str and numbers.
    options |= {"argsrepr": "()", "kwargsrepr": repr(kwargs)}
    return app.signature(name, kwargs=kwargs, immutable=True, ignore_result=True, **options)
