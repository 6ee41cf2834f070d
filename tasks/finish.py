"""Steps 4-6: apply the tags, give the server its requested name, read it back, ACTIVE.

Tags are replaced as a whole (one call), keeping the cloud's own ``__type_baremetal``. A server
is created under its requested name, so the rename step calls the cloud only for a server an
earlier release created under a marker name, or one a count create named otherwise (a later
chunk of a group, see ``tasks.group_create``). Finalize reads the server once, records its
addresses and ends the request.
A request cancelled during one of these calls is handed to cleanup when the call returns.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, update

from models.base import utcnow
from models.db import session_scope
from models.outbox import add_event, batch_of
from models.records import ServerRequest, transition
from models.spec import BAREMETAL_TAG
from models.states import RequestState, Step
from tasks.base import Chain, Next, claim, fail, handoff, step_task
from tasks.plan import chain_signature, next_task_name
from worker.runtime import runtime

S = RequestState


@dataclass(frozen=True)
class Stage:
    """What the TAGGING stage's calls need of the row."""

    server_id: str
    spec: dict
    name: str
    #: The server still carries another name than the requested one (see :func:`stage_of`).
    marker_name: bool


def stage_of(request: ServerRequest) -> Stage:
    # Creates of this release use the final name (their serial is counted from 1); a server
    # created by an earlier release carries a marker name until renamed, and so does one a
    # group's count create could not give its name (``cloud_name``).
    marker_name = request.create_serial == 0 or request.cloud_name not in (None, request.name)
    return Stage(request.server_id, request.spec, request.name, marker_name)


def _load_stage(chain: Chain, step_before: Step | None):
    """The row's server id, spec, name and whether it needs a rename if this step is due;
    else the signature of what is."""
    with claim(chain) as (_session, request):
        if request.state is not S.TAGGING or request.step_done is not step_before:
            return None, handoff(request)
        stage = stage_of(request)
        return (stage.server_id, stage.spec, stage.name, stage.marker_name), None


def at_once(request: ServerRequest) -> Next:
    """Hand ``request`` on (:func:`tasks.base.handoff`), unless the transaction in hand puts it
    in TAGGING with nothing of the stage done: then the whole stage is done in the same run
    (``Next.then``), one transaction at its end instead of three messages and six transactions.

    The stage done at once does not advance the token: the message in hand keeps the request
    while it does the stage. A worker killed during the stage leaves no message of the stage,
    only that one, which the broker delivers again; with its token still the row's, its claim
    finds TAGGING and sends the stage's first step (with the token advanced, it would stop as
    stale and the request wait for the reconciler). The stage's message sent should the stage
    fail carries that token too.
    """
    # The state first: the next task of an ATTACHING request is read from its attachments, which
    # the hand-off then loads after advancing the token. Loaded before, their load's autoflush
    # would write the row once, and the token's advance once more (a second UPDATE).
    if request.state is not S.TAGGING or next_task_name(request) != "bms.apply_tags":
        return handoff(request)
    request.restarts = 0  # it moves, as after a hand-off: the reconciler's count starts again
    return stage_at_once(Chain(str(request.id), request.fence), stage_of(request))


def stage_at_once(chain: Chain, stage: Stage) -> Next:
    """The tagging stage of a request in TAGGING with nothing of it done, committed so, done
    in this run by ``chain`` (the message in hand, its token kept: see :func:`at_once`)."""
    signature = chain_signature("bms.apply_tags", chain)
    return Next(signature, then=functools.partial(finish_stage, chain, stage))


def finish_stage(chain: Chain, stage: Stage) -> Next | None:
    """The calls of apply_tags, rename_server and finalize in turn, then finalize's one
    transaction. Each call may be made again (by the steps' own messages, should this fail
    half-way): tags are replaced as a whole, a rename to the same name changes nothing."""
    client = runtime().client
    if stage.spec["tags"]:
        client.nova.replace_tags(stage.server_id, [*stage.spec["tags"], BAREMETAL_TAG])
    if stage.marker_name:
        client.rename_server(stage.server_id, stage.name)
    return _finalized(chain, stage.server_id, client.show_server(stage.server_id))


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
    return _finalized(chain, server_id, runtime().client.show_server(server_id))


def _finalized(chain: Chain, server_id: str, server: dict) -> Next:
    """Record the server as read back: ACTIVE, with its addresses."""
    if server.get("status") == "ACTIVE" and _active_at_once(chain, server_id, server):
        return Next(None)
    with claim(chain) as (session, request):
        if request.state is not S.TAGGING:
            return handoff(request)  # cancelled meanwhile: cleanup deletes the server
        request.step_done = Step.RENAME  # tags and name done, by their steps or at once
        request.addresses = server.get("addresses") or {}
        if server.get("status") != "ACTIVE":
            fail(session, request, Step.FINALIZE, "ORCH.NOT_ACTIVE", f"status {server['status']}")
            return Next(None)
        request.step_done = Step.FINALIZE
        transition(session, request, S.ACTIVE, detail=f"server {server_id} ready")
        return Next(None)


_R = ServerRequest.__table__.c
#: Finalize's usual UPDATE (see :func:`_active_at_once`); built once (Core, on the table: no
#: ORM compile step, the cache key computed once; issue 11).
_ACTIVE = (
    update(ServerRequest.__table__)
    .where(_R.id == bindparam("request_id"), _R.fence == bindparam("token"))
    .where(_R.state == S.TAGGING)
    .values(
        state=S.ACTIVE,
        step_done=Step.FINALIZE,
        addresses=bindparam("read_addresses", type_=_R.addresses.type),
        updated_at=bindparam("now"),
    )
    .returning(_R.batch_id)
)


def _active_at_once(chain: Chain, server_id: str, server: dict) -> bool:
    """The usual end, in two statements and no row loaded: the request this message owns, still
    TAGGING, becomes ACTIVE with the server's addresses in one conditional UPDATE, and its event
    is added (the outbox is told the request's batch, so that it need not load the row to learn
    that the batch wants no webhook). ``False``: anything else (a cancel, a stale message),
    which the claim sorts out (nothing was written)."""
    request_id, now = uuid.UUID(chain.request_id), utcnow()
    params = {"request_id": request_id, "token": chain.fence, "now": now,
              "read_addresses": server.get("addresses") or {}}  # fmt: skip
    with session_scope(runtime().sessions) as session:
        batch_id = session.execute(_ACTIVE, params).scalar_one_or_none()
        if batch_id is None:
            return False
        batch_of(session)[request_id] = batch_id
        add_event(session, request_id, S.TAGGING, S.ACTIVE, f"server {server_id} ready", now)
    return True
