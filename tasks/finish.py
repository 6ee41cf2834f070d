"""Steps 4-6: apply the tags, give the server its requested name, read it back, ACTIVE.

Tags are replaced as a whole (one call), keeping the cloud's own ``__type_baremetal``. A server
is created under its requested name, so the rename step calls the cloud only for a server an
earlier release created under a marker name, or one a count create named otherwise (a later
chunk of a group, see ``tasks.group_create``). Finalize reads the server once, records its
addresses and ends the request.
A request cancelled during one of these calls is handed to cleanup when the call returns.
"""

from __future__ import annotations

from models.records import transition
from models.spec import BAREMETAL_TAG
from models.states import RequestState, Step
from tasks.base import Chain, Next, claim, fail, handoff, step_task
from worker.runtime import runtime

S = RequestState


def _load_stage(chain: Chain, step_before: Step | None):
    """The row's server id, spec, name and whether it needs a rename if this step is due;
    else the signature of what is."""
    with claim(chain) as (_session, request):
        if request.state is not S.TAGGING or request.step_done is not step_before:
            return None, handoff(request)
        # Creates of this release use the final name (their serial is counted from 1); a
        # server created by an earlier release carries a marker name until renamed, and so does
        # one a group's count create could not give its name (``cloud_name``).
        marker_name = request.create_serial == 0 or request.cloud_name not in (None, request.name)
        return (request.server_id, request.spec, request.name, marker_name), None


def _mark_done(chain: Chain, step: Step) -> Next:
    with claim(chain) as (_session, request):
        if request.state is S.TAGGING:
            request.step_done = step
        return handoff(request)


@step_task("bms.apply_tags", Step.TAG)
def apply_tags(chain: Chain) -> Next | None:
    loaded, skip = _load_stage(chain, None)
    if skip:
        return skip
    server_id, spec, _name, _marker_name = loaded
    if spec["tags"]:
        runtime().client.nova.replace_tags(server_id, [*spec["tags"], BAREMETAL_TAG])
    return _mark_done(chain, Step.TAG)


@step_task("bms.rename_server", Step.RENAME)
def rename_server(chain: Chain) -> Next | None:
    loaded, skip = _load_stage(chain, Step.TAG)
    if skip:
        return skip
    server_id, _spec, name, marker_name = loaded
    if marker_name:
        runtime().client.rename_server(server_id, name)
    return _mark_done(chain, Step.RENAME)


@step_task("bms.finalize", Step.FINALIZE)
def finalize(chain: Chain) -> Next | None:
    loaded, skip = _load_stage(chain, Step.RENAME)
    if skip:
        return skip
    server_id, _spec, _name, _marker_name = loaded
    server = runtime().client.show_server(server_id)
    with claim(chain) as (session, request):
        if request.state is not S.TAGGING:
            return handoff(request)  # cancelled meanwhile: cleanup deletes the server
        request.addresses = server.get("addresses") or {}
        if server.get("status") != "ACTIVE":
            fail(session, request, Step.FINALIZE, "ORCH.NOT_ACTIVE", f"status {server['status']}")
            return Next(None)
        request.step_done = Step.FINALIZE
        transition(session, request, S.ACTIVE, detail=f"server {server_id} ready")
        return Next(None)
