"""Count creates: one create call makes a group of a batch's servers, one poll watches it, and
its results are handed to each member.

Planning (:func:`plan_batch`, before a batch's first dispatch): the runs that
``tasks.grouping.plan_groups`` finds (bodies identical apart from the name, names ``web-0000``,
``web-0001``, ... in order, no fixed IP, no existing EIP, never across batches) become
``create_groups`` rows of up to ``BMS_CREATE_GROUP_MAX`` members each. The feeder
(``tasks.batch_dispatch``) sends one create, with one slot, for a group's first waiting member.

Create (:func:`create_member`, the create step of a member): the first member message that runs
locks the group, then its members, and decides the call: ``count`` = the members still to
create, each given the name the call will make (``cloud_name``). It writes the group's intent,
moves them to CREATING and advances their tokens (their own create messages become no-ops),
then POSTs once. The job is recorded on the group, every member goes to BUILDING, and one
member's message polls the group's job. Names: a first chunk whose members are all still to
create is made under its own base name (``web`` gives ``web-0000`` ...); any other call (a later
chunk, a member cancelled before the call) is made under the group's marker and renamed at the
end (one ``update`` call per server; ``count`` 1 uses the final name).

Crash safety: every server of the call carries the group's marker in its metadata. A run that
finds an intent but no job (the answer was lost) lists the call's base name and adopts what
carries the marker, after the look-up grace; never a second POST while a server may show up.
Servers with the marker that no member takes are queued as strays.

Poll (:func:`poll_group_job`): one member polls for the group (a lease on the group row:
another member takes over only once the poll has been silent for the reconciler's idle time);
each poll marks every member as moving, so the reconciler leaves them alone. The servers are
matched to members by name (``list_servers`` of the base name, marker checked) and by sub_job:
a member whose sub_job succeeded goes on to attach and tags as soon as a poll sees it (the job
ends only with its slowest sub_job); when the job ends, a failed one is cleaned up and retried
(with its peers that need a retry too, see :func:`regroup`, else on its own; same attempt
budget and error codes), a cancelled one has its server deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from celery.canvas import Signature
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from bms.exceptions import BadRequest
from bms.jobs import SUCCESS, Job, JobOutcome
from models.base import as_utc, utcnow
from models.db import session_scope
from models.records import (
    Batch,
    CloudJob,
    CreateGroup,
    GroupState,
    JobKind,
    ServerRequest,
    StrayServer,
    open_group_clause,
    record_note,
    transition,
)
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState, Step
from tasks.base import (
    Chain,
    Next,
    StaleChain,
    Wait,
    advance,
    fail,
    handoff,
    send_each,
    step_task,
)
from tasks.create import CreateOutcomes, create_server, post_create
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.grouping import COUNT_NAME, group_key, plan_groups
from tasks.plan import next_signature, step_signature
from tasks.poll import _create_done, _create_failed, _CreateFailure, _record, _still_running
from tasks.timing import DEADLINES, create_backoff, first_poll
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.group_create")
S = RequestState
G = GroupState
#: Page size of the look-ups by name (the cloud's maximum).
LIST_PAGE = 1000


def group_marker(group_id: uuid.UUID) -> str:
    """Unique per group; a group is created at most once, so it needs no attempt number."""
    return f"g{group_id.hex[:16]}"


# -- planning ----------------------------------------------------------------------------------


def plan_batch(
    sessions: sessionmaker[Session], batch_id: uuid.UUID, group_max: int
) -> list[uuid.UUID]:
    """Put the batch's groupable requests into groups; returns each new group's first member.

    Only before anything of the batch was dispatched (every token 0) and only once: the batch
    row is locked, and a batch that has any group already is left as it is.
    """
    with session_scope(sessions) as session:
        session.scalar(select(Batch.id).where(Batch.id == batch_id).with_for_update())
        query = select(ServerRequest).where(ServerRequest.batch_id == batch_id)
        requests = list(session.scalars(query.order_by(ServerRequest.position)))
        if any(r.group_id is not None or r.fence for r in requests):
            return []
        bodies = [(r.spec or {}).get("create_body") or {} for r in requests]
        leaders = []
        for positions in plan_groups(bodies, group_max):
            members = [requests[p] for p in positions]
            if sum(1 for m in members if m.state is S.PENDING) < 2:
                continue
            base, _rest, first_index = group_key(bodies[positions[0]])
            group_id = uuid.uuid4()
            session.add(
                CreateGroup(
                    id=group_id,
                    batch_id=batch_id,
                    base_name=base,
                    first_index=first_index,
                    size=len(members),
                    marker=group_marker(group_id),
                )
            )
            session.flush()
            for index, member in enumerate(members):
                member.group_id, member.group_index = group_id, index
            leaders.append(next(m.id for m in members if m.state is S.PENDING))
    return leaders


def create_path(chain: Chain) -> str:
    """How this request is created (a plain read; re-checked locked): ``"group"``, by its
    group's call; ``"regroup"``, its group is done with it and it may go with its peers
    (:func:`regroup`); ``"alone"``, its own create.

    :raises StaleChain: the message's token is already behind the row's (tokens only grow):
        the many member messages a group's create made no-ops stop here, before any lock.
    """
    with session_scope(runtime().sessions) as session:
        row = session.execute(
            select(ServerRequest, CreateGroup.state, CreateGroup.intent_at)
            .outerjoin(CreateGroup, ServerRequest.group_id == CreateGroup.id)
            .where(ServerRequest.id == uuid.UUID(chain.request_id))
        ).one_or_none()
        if row is None or row[0].fence > chain.fence:
            raise StaleChain(chain.request_id)
        request, state, intent_at = row
        if state is None:
            return "alone"
        if _in_group_path(state, intent_at, request.cloud_name):
            return "group"
        return "regroup" if state is G.DONE and waits_for_create(request) else "alone"


def _in_group_path(state: GroupState, intent_at, cloud_name: str | None) -> bool:
    """A member is created by its group while the group is not made yet (and, once a call may
    be in the cloud, only if that call includes it), or while the group's job is watched."""
    if state is G.PLANNED:
        return intent_at is None or cloud_name is not None
    return state is G.POSTED and cloud_name is not None


# -- the group's claim ------------------------------------------------------------------------


@dataclass
class Held:
    """A group and its members, locked in one transaction, and the member in hand."""

    session: Session
    group: CreateGroup
    members: list[ServerRequest]
    request: ServerRequest
    #: Other members' next steps, sent once the transaction committed.
    sends: list[Signature] = field(default_factory=list)

    def included(self) -> list[ServerRequest]:
        """The members the group's call makes (named by it)."""
        return [m for m in self.members if m.cloud_name is not None]

    def hand_on(self, member: ServerRequest, countdown: float | None = None) -> Next:
        """Advance ``member`` and name its next step; another member's is sent after commit."""
        outcome = handoff(member, countdown)
        if member is self.request:
            return outcome
        if outcome.signature is not None:
            self.sends.append(outcome.signature)
        return Next(None)


@contextmanager
def claim_group(chain: Chain, *, owned: bool = True) -> Iterator[Held]:
    """One short transaction: the group row locked, then its members (always in that order).

    :raises StaleChain: the request is gone or in no group, or (``owned``) the message's
        token is not the row's.
    """
    sends: list[Signature] = []
    with session_scope(runtime().sessions) as session:
        request_id = uuid.UUID(chain.request_id)
        group_id = session.scalar(
            select(ServerRequest.group_id).where(ServerRequest.id == request_id)
        )
        if group_id is None:
            raise StaleChain(chain.request_id)
        group = session.scalar(
            select(CreateGroup).where(CreateGroup.id == group_id).with_for_update()
        )
        members = list(
            session.scalars(
                select(ServerRequest)
                .where(ServerRequest.group_id == group_id)
                .options(selectinload(ServerRequest.attachments))
                .order_by(ServerRequest.group_index)
                .with_for_update()
            )
        )
        request = next(m for m in members if m.id == request_id)
        if owned and not chain.owns(request):
            raise StaleChain(chain.request_id)
        held_fence = request.fence
        held = Held(session, group, members, request)
        yield held
        sends = held.sends
        advanced, token = request.fence != held_fence, request.fence
    if advanced:
        chain.fence = token
    _send(sends)


def _send(signatures: list[Signature]) -> None:
    """Send the other members' next steps, after the commit (unit tests catch them here)."""
    send_each(signatures, lambda signature: signature)


# -- create -----------------------------------------------------------------------------------


# Capacity first, as a create: the feeder hands the group's one create its slot.
@step_task("bms.create_group", Step.CREATE, capacity_first=True)
def create_group(chain: Chain) -> Next | None:
    """The create step of a member of a count group (``tasks.plan`` names it): the group's one
    create, or nothing when another member's message made it; a member its group is done
    with (failed in its call, or retried by an operator) is created again with the peers of
    its group that wait for a create too (a new group), or on its own."""
    path = create_path(chain)
    if path == "group" or (path == "regroup" and regroup(chain)):
        return create_member(chain)
    return create_server(chain)


# -- a group no chain watches ------------------------------------------------------------------


def silent_group_ids(session: Session, idle_seconds: float) -> list[uuid.UUID]:
    """Groups whose call may have made servers but that nothing has moved for ``idle_seconds``:
    a job whose poll is silent, or an intent whose answer was never recorded."""
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    query = select(CreateGroup.id).where(
        open_group_clause(),  # the predicate of the index this query walks
        ((CreateGroup.state == G.POSTED) & (CreateGroup.polled_at < cutoff))
        | ((CreateGroup.state == G.PLANNED) & (CreateGroup.intent_at < cutoff)),
    )
    return list(session.scalars(query.order_by(CreateGroup.updated_at).limit(1000)))


def restart_group(
    sessions: sessionmaker[Session], group_id: uuid.UUID, idle_seconds: float
) -> Signature | None:
    """The group's step for one of the members its call includes, when no member's own chain
    would bring it back (the request reconciler restarts a BUILDING or CREATING member, which
    watches the group; it leaves cancelled and ended ones alone). So a group whose members
    were all cancelled after its POST, its poll message lost, is still watched to its end,
    and the servers it made are deleted.

    One transaction: the group locked, then its members; the chosen member's token advanced
    and, for a posted group, the poll lease given to it (silent since: no other poller).
    """
    with session_scope(sessions) as session:
        group = session.scalar(
            select(CreateGroup).where(CreateGroup.id == group_id).with_for_update()
        )
        cutoff = utcnow() - timedelta(seconds=idle_seconds)
        silent_since = (
            group.polled_at if group is not None and group.state is G.POSTED
            else group.intent_at if group is not None and group.state is G.PLANNED
            else None
        )  # fmt: skip
        if silent_since is None or as_utc(silent_since) >= cutoff:
            return None  # moved since it was found silent, or done
        members = list(
            session.scalars(
                select(ServerRequest)
                .where(ServerRequest.group_id == group_id)
                .order_by(ServerRequest.group_index)
                .with_for_update()
            )
        )
        included = [m for m in members if m.cloud_name is not None]
        if not included or any(m.state in (S.BUILDING, S.CREATING) for m in included):
            return None  # the request reconciler restarts those, and they watch the group
        member = included[0]
        advance(member)
        record_note(session, member, f"group {group.marker} silent: watched again")
        if group.state is G.POSTED:
            group.poller_id, group.polled_at = member.id, utcnow()
            return step_signature("bms.poll_group_job", member)
        return step_signature("bms.create_group", member)


def reconcile_groups(sessions: sessionmaker[Session], idle_seconds: float) -> int:
    """The reconciler's part for groups: returns how many it restarted."""
    with session_scope(sessions) as session:
        silent = silent_group_ids(session, idle_seconds)
    restarted = send_each(silent, lambda group_id: restart_group(sessions, group_id, idle_seconds))
    if restarted:
        log.warning("reconciler: %d silent group(s) watched again", restarted)
    return restarted


# -- a retry re-enters grouping ---------------------------------------------------------------


def waits_for_create(member: ServerRequest) -> bool:
    """A member its group is done with that is to be created again, with nothing of its own
    in the cloud or under way: no intent, no job, no server, nothing left to delete."""
    return (
        member.state is S.CREATING
        and member.cloud_name is None
        and member.create_intent_at is None
        and not (member.job_id or member.server_id or member.cleanup_server_id)
    )


def regroup(chain: Chain) -> bool:
    """A retried member takes the members of its (done) group that wait for a create too into
    a new group, created by one ``count`` call: returns whether it did (``False``: on its own).

    The members failed in one call are cleaned up side by side and come back about together;
    the first back waits for the peers still deleting a failed server (a cleanup always ends:
    deleted, or given up for an operator), as long as a delete may take at most
    (``wait_deadline_at``, the delete deadline), then goes with those ready.
    """
    wait = None
    with claim_group(chain) as held:
        group, request = held.group, held.request
        if group.state is not G.DONE or not waits_for_create(request):
            return False
        ready = [m for m in held.members if waits_for_create(m)]
        cleaning = [
            m
            for m in held.members
            if m.state is S.CREATING and m.cloud_name is None and m.cleanup_server_id
        ]
        now = utcnow()
        if request.wait_deadline_at is None and cleaning:
            request.wait_deadline_at = now + timedelta(seconds=DEADLINES[JobKind.DELETE])
        if cleaning and now < as_utc(request.wait_deadline_at):
            wait = min(first_poll(JobKind.DELETE), (as_utc(request.wait_deadline_at) - now)
                       .total_seconds())  # fmt: skip
            advance(request)
        elif len(ready) < 2:
            request.wait_deadline_at = None
            return False
        else:
            _new_group(held, ready)
            return True
    raise Wait(wait, "peers of its group are still deleting their failed servers")


def _new_group(held: Held, ready: list[ServerRequest]) -> None:
    """The members ``ready`` make a new group of their own (their old one is done)."""
    old = held.group
    group_id = uuid.uuid4()
    held.session.add(
        CreateGroup(
            id=group_id,
            batch_id=old.batch_id,
            base_name=old.base_name,
            # Each member's place is its name's index: the call gives them their own names
            # only if they are base-0000, base-0001, ... (see ``_write_intent``).
            first_index=0,
            size=len(ready),
            marker=group_marker(group_id),
        )
    )
    held.session.flush()
    for member in ready:
        member.group_id, member.group_index = group_id, _name_index(member.name)
        member.wait_deadline_at = None
        record_note(held.session, member, f"created again with {len(ready)} of its group")
        if member is not held.request:
            advance(member)  # its own create message is now a no-op


def _name_index(name: str) -> int:
    found = COUNT_NAME.match(name)
    return int(found["index"]) if found else 0


def create_member(chain: Chain) -> Next | None:
    """The create step of a request whose group creates it."""
    with claim_group(chain) as held:
        group, request = held.group, held.request
        if not _in_group_path(group.state, group.intent_at, request.cloud_name):
            return handoff(request)  # the group is done with it: its own create comes next
        if group.state is G.POSTED:
            return _join_posted(held)
        in_cloud_maybe = group.intent_at is not None
        if not in_cloud_maybe:
            to_create = [m for m in held.members if m.state in (S.PENDING, S.CREATING)]
            if not to_create:
                group.state = G.DONE  # every member cancelled or ended before the call
                return handoff(request)
            _write_intent(held, to_create)
        body, marker = _body(group, held.included()[0]), group.marker
    if in_cloud_maybe:
        settled = _adopt_by_marker(chain, marker)
        if settled is not None:
            return settled
    return post_create(chain, body, marker, not in_cloud_maybe, GROUP)


def _join_posted(held: Held) -> Next:
    """The group's job is watched: a member retried meanwhile waits for it with the others."""
    request = held.request
    if request.state is S.CREATING:
        transition(held.session, request, S.BUILDING, detail=f"in group job {held.group.job_id}")
    return handoff(request)


def _write_intent(held: Held, to_create: list[ServerRequest]) -> None:
    """Decide the call (its base name, ``count``, each member's name in it) before the POST."""
    group = held.group
    for_their_names = group.first_index == 0 and [m.group_index for m in to_create] == list(
        range(len(to_create))
    )
    group.count = len(to_create)
    group.cloud_base = (
        to_create[0].name if len(to_create) == 1 else group.base_name if for_their_names
        else group.marker
    )  # fmt: skip
    group.intent_at = utcnow()
    for member in held.members:
        member.cloud_name = None
    for position, member in enumerate(to_create):
        member.cloud_name = group.cloud_base if group.count == 1 else (
            f"{group.cloud_base}-{position:04d}"
        )  # fmt: skip
        if member.state is S.PENDING:
            detail = f"dispatched: one create of {group.count} ({group.cloud_base})"
            transition(held.session, member, S.CREATING, detail=detail)
        member.attempt += 1
        member.create_serial += 1  # made by this release: no marker in its name
        if member is not held.request:
            advance(member)  # its own create message is now a no-op


def _body(group: CreateGroup, member: ServerRequest) -> dict:
    """The group's create body: a member's body, the call's base name, ``count``, the marker."""
    body = dict(member.spec["create_body"])
    body["name"] = group.cloud_base
    body["count"] = group.count
    body["metadata"] = {**body["metadata"], MARKER_METADATA_KEY: group.marker}
    return body


def _record_job(chain: Chain, marker: str, job_id: str) -> Next | None:
    # Recorded whatever the token: the cloud accepted a create, which must not be lost.
    with claim_group(chain, owned=False) as held:
        group, request = held.group, held.request
        held.session.add(CloudJob(job_id=job_id, request_id=request.id, kind=JobKind.CREATE))
        if group.marker != marker or group.state is not G.PLANNED or group.intent_at is None:
            reason = f"group create job {job_id} answered after the group had moved on"
            held.session.add(
                StrayServer(request_id=request.id, create_job_id=job_id, reason=reason)
            )
            record_note(held.session, request, f"{reason}: queued for deletion")
            return None
        group.job_id, group.state, group.intent_at = job_id, G.POSTED, None
        included = held.included()
        for member in included:
            if member.state is S.CREATING:
                transition(held.session, member, S.BUILDING, detail=f"group create job {job_id}")
            if member is not request:
                advance(member)
        # One poll for the group: by the member in hand if it is ours and in the call; else by
        # another member (a member held by another message learns of the job from the rows).
        owned = chain.owns(request)
        others = [m for m in included if m is not request]
        poller = request if owned and request in included else (others or [None])[0]
        if poller is None:
            return None
        group.poller_id, group.polled_at = poller.id, utcnow()
        if poller is request:
            return handoff(request, first_poll(JobKind.CREATE))
        held.sends.append(next_signature(poller, first_poll(JobKind.CREATE)))
        return handoff(request) if owned else None


def _not_sent(chain: Chain, new_attempt: bool) -> None:
    """The create certainly did not reach the cloud: no intent, and no attempt spent on it."""
    with claim_group(chain) as held:
        held.group.intent_at = None
        if new_attempt:
            for member in held.included():
                member.attempt -= 1


def _refused(chain: Chain, exc: BadRequest) -> Next | None:
    """The cloud refused the call outright: nothing was made. A retryable refusal is retried by
    the group after a backoff; any other ends every member of the call."""
    retry_in = None
    with claim_group(chain) as held:
        held.group.intent_at = None
        live = [m for m in held.included() if m.state is S.CREATING]
        attempts_left = all(m.attempt < runtime().settings.max_attempts for m in live)
        if live and is_retryable(exc.error_code, from_job=False) and attempts_left:
            for member in live:
                member.last_error_code, member.last_error_message = exc.error_code, exc.message
            retry_in = create_backoff(max(m.attempt for m in live))
            advance(held.request)
        else:
            for member in live:
                fail(held.session, member, Step.CREATE, exc.error_code, exc.message or str(exc))
            held.group.state = G.DONE
            return handoff(held.request)
    raise Wait(retry_in, f"group create refused: {exc.error_code}")


#: The group path's outcomes of its POST.
GROUP = CreateOutcomes(not_sent=_not_sent, refused=_refused, record_job=_record_job)


def _adopt_by_marker(chain: Chain, marker: str) -> Next | None:
    """An earlier run may have created the group (its answer lost): adopt what carries the
    marker, wait out the listing delay, or return ``None`` to POST (again) now."""
    with claim_group(chain) as held:
        cloud_base, count = held.group.cloud_base, held.group.count
    by_name, extras = _listed_with_marker(cloud_base, marker)
    wait = None
    with claim_group(chain) as held:
        group, request = held.group, held.request
        if group.marker != marker or group.state is not G.PLANNED or group.intent_at is None:
            return handoff(request)
        intent_age = utcnow() - as_utc(group.intent_at)
        grace = timedelta(seconds=runtime().settings.create_lookup_grace_seconds)
        if len(by_name) < count and intent_age < grace:
            # Servers may not be listed yet right after the create: look again before deciding.
            wait = (grace - intent_age).total_seconds()
            advance(request)
        elif by_name or extras:
            return _adopt(held, by_name, extras)
        elif not any(m.state is S.CREATING for m in held.included()):
            group.intent_at, group.state = None, G.DONE  # nothing made, nobody waiting for it
            record_note(held.session, request, f"no server with marker {marker}: nothing made")
            return handoff(request)
        else:
            # A new POST with the same marker: its intent starts now, in the transaction that
            # decided it, so that a second copy deciding next sees it and waits.
            group.intent_at = utcnow()
    if wait is not None:
        raise Wait(wait, "group create may still appear", progress=False)
    log.info("%s: group marker %s not found after the grace, creating", chain.request_id, marker)
    return None


def _adopt(held: Held, by_name: dict[str, dict], extras: list[dict]) -> Next:
    """Each member takes the server of its name and watches it build; a member whose server
    never showed is created on its own; anything else with the marker is a stray."""
    group, request = held.group, held.request
    group.intent_at, group.state = None, G.DONE
    own = None
    for member in held.included():
        server = by_name.pop(member.cloud_name, None)
        if server is None:
            member.cloud_name = None
            if member.state is S.CREATING:
                record_note(held.session, member, "not made by the group's create: on its own")
        elif member.state is S.CANCELLED:
            member.cleanup_server_id, member.cleanup_attempts = server["id"], 0
            record_note(held.session, member, f"server {server['id']} found after the cancel")
        elif member.state is S.CREATING:
            member.server_id, member.job_id, member.wait_deadline_at = server["id"], None, None
            transition(held.session, member, S.BUILDING, detail=f"adopted server {server['id']}")
        else:
            _stray(held, member, server["id"], f"server {server['id']} of its group, unused")
            continue
        outcome = held.hand_on(member)
        own = outcome if member is request else own
    for server in [*by_name.values(), *extras]:
        _stray(held, request, server["id"], f"second server with group marker {group.marker}")
    return own or handoff(request)


def _stray(held: Held, member: ServerRequest, server_id: str, reason: str) -> None:
    held.session.add(StrayServer(request_id=member.id, server_id=server_id, reason=reason))
    record_note(held.session, member, f"{reason}: queued for deletion")


def _listed_with_marker(cloud_base: str, marker: str) -> tuple[dict[str, dict], list[dict]]:
    """Live servers named like ``cloud_base`` that carry ``marker``: by name, and the extras
    (a second server of one name)."""
    by_name: dict[str, dict] = {}
    extras: list[dict] = []
    page = 1
    while True:
        servers = runtime().client.list_servers(name=cloud_base, limit=LIST_PAGE, offset=page)
        for server in servers.servers:
            if server.get("metadata", {}).get(MARKER_METADATA_KEY) != marker:
                continue
            if server.get("status") == "DELETED":
                continue
            if server.get("name") in by_name:
                extras.append(server)
            else:
                by_name[server.get("name")] = server
        if len(servers.servers) < LIST_PAGE:
            return by_name, extras
        page += 1


# -- poll -------------------------------------------------------------------------------------


@step_task("bms.poll_group_job", Step.POLL_CREATE)
def poll_group_job(chain: Chain) -> Next | None:
    """Watch the group's create job (one poller per group), then hand each member on."""
    if _polled_by_another(chain):
        return None
    with claim_group(chain) as held:
        group, request = held.group, held.request
        if group.state is not G.POSTED or request.cloud_name is None:
            return handoff(request)
        if not _may_poll(group, request.id):
            log.info("%s: group %s is polled by another member", chain.request_id, group.id)
            return None
        group.poller_id, group.polled_at = request.id, utcnow()
        job_id, cloud_base, marker = group.job_id, group.cloud_base, group.marker
        handed = {m.server_id for m in held.included() if m.server_id}
    job = runtime().client.show_job(job_id)
    servers = ({}, [])
    if job.outcome is not JobOutcome.RUNNING or _built(job) - handed:
        servers = _listed_with_marker(cloud_base, marker)
    wait = None
    with claim_group(chain) as held:
        group, request = held.group, held.request
        if group.job_id != job_id or group.state is not G.POSTED:
            return handoff(request)
        cloud_job = _record(held.session, request, job_id, job, JobKind.CREATE)
        if job.outcome is JobOutcome.RUNNING:
            wait = _still_running(cloud_job)
            if wait is None:
                return _timed_out(held, job)
            _hand_on_built(held, job, servers[0])
            _touch(held)
            advance(request)
        else:
            return _distribute(held, job, *servers)
    raise Wait(wait, "group create job running")


def _polled_by_another(chain: Chain) -> bool:
    """A plain read first: a member's message (a dispatch, a restart) while another member
    holds the lease stops before locking the group's rows."""
    with session_scope(runtime().sessions) as session:
        group = session.scalar(
            select(CreateGroup)
            .join(ServerRequest, ServerRequest.group_id == CreateGroup.id)
            .where(ServerRequest.id == uuid.UUID(chain.request_id))
        )
        return (
            group is not None
            and group.state is G.POSTED
            and not _may_poll(group, uuid.UUID(chain.request_id))
        )


def _may_poll(group: CreateGroup, request_id: uuid.UUID) -> bool:
    """The poll lease: this member's, or its poller silent for the reconciler's idle time."""
    if group.poller_id in (None, request_id) or group.polled_at is None:
        return True
    lease = timedelta(seconds=runtime().settings.reconcile_after_seconds)
    return utcnow() - as_utc(group.polled_at) > lease


def _touch(held: Held) -> None:
    """The group moves: so does every member waiting for it (the reconciler leaves them be)."""
    now = utcnow()
    held.group.polled_at = now
    for member in held.included():
        if member is not held.request and member.state in (S.BUILDING, S.CANCELLED):
            member.updated_at, member.restarts = now, 0


def _built(job: Job) -> set[str]:
    """The servers of the job's sub_jobs that succeeded."""
    return {sub.server_id for sub in job.sub_jobs if sub.status == SUCCESS and sub.server_id}


def _hand_on_built(held: Held, job: Job, by_name: dict[str, dict]) -> None:
    """While the job runs, each member whose server is built goes on (attach, tags) at once:
    a group's job ends with its slowest sub_job, its built servers need not wait for it. The
    poller waits for the job's end (its message is the group's poll)."""
    built = _built(job)
    for member in held.included():
        server = by_name.get(member.cloud_name)
        if member is held.request or member.state is not S.BUILDING or member.server_id:
            continue
        if server is not None and server["id"] in built:
            outcome = _create_done(held.session, member, server["id"])
            if outcome.signature is not None:
                held.sends.append(outcome.signature)


def _distribute(held: Held, job: Job, by_name: dict[str, dict], extras: list[dict]) -> Next:
    """The job ended: each member learns its server (by name, checked against the sub_jobs)."""
    group, request = held.group, held.request
    group.state = G.DONE
    built = _built(job)
    failed = {sub.server_id: sub for sub in job.sub_jobs if sub.failed and sub.server_id}
    serverless = [sub for sub in job.sub_jobs if sub.failed and not sub.server_id]
    default = serverless[0] if serverless else None
    code = (default.error_code if default else None) or job.error_code or "BMS.3004"
    reason = (default.fail_reason if default else None) or job.fail_reason or "not made"
    own = None
    for member in held.included():
        server = by_name.pop(member.cloud_name, None)
        server_id = server["id"] if server else None
        if server_id is not None and member.server_id == server_id:
            continue  # built before the job ended, and handed on then (its chain goes on)
        if server_id in built:
            outcome = _member_built(held, member, server_id)
        else:
            sub = failed.get(server_id)
            failure = _CreateFailure(
                [server_id] if server_id else [],
                sub.error_code if sub else code,
                (sub.fail_reason if sub else None) or reason,
            )
            outcome = _member_failed(held, member, failure)
        own = outcome if member is request else own
    taken = {m.server_id for m in held.members} | {m.cleanup_server_id for m in held.members}
    leftovers = [s["id"] for s in [*by_name.values(), *extras]]
    leftovers += [sid for sid in built | set(failed) if sid not in leftovers]
    for server_id in leftovers:
        if server_id not in taken:
            _stray(held, request, server_id, f"server {server_id} of group job {job.job_id}")
    return own or handoff(request)


def _member_built(held: Held, member: ServerRequest, server_id: str) -> Next:
    if member.state in (S.BUILDING, S.CANCELLED):
        outcome = _create_done(held.session, member, server_id)
        if member is held.request:
            return outcome
        if outcome.signature is not None:
            held.sends.append(outcome.signature)
        return Next(None)
    # Ended meanwhile (FAILED by its poll's budget): its retry resumes at the built server.
    member.server_id = server_id
    return held.hand_on(member)


def _member_failed(held: Held, member: ServerRequest, failure: _CreateFailure) -> Next:
    member.cloud_name = None  # another attempt is made on its own, under its final name
    if member.state in (S.BUILDING, S.CANCELLED):
        outcome = _create_failed(held.session, member, failure)
        if member is held.request:
            return outcome
        if outcome.signature is not None:
            held.sends.append(outcome.signature)
        return Next(None)
    if failure.server_ids:
        member.cleanup_server_id, member.cleanup_attempts = failure.server_ids[0], 0
    return held.hand_on(member)


def _timed_out(held: Held, job: Job) -> Next:
    """Past the create deadline: every member fails; the job, which may still make servers,
    is handed to the stray sweeper."""
    reason = f"group create job {job.job_id} past its deadline"
    held.session.add(
        StrayServer(request_id=held.request.id, create_job_id=job.job_id, reason=reason)
    )
    record_note(held.session, held.request, f"{reason}: queued for deletion")
    held.group.state = G.DONE
    own = None
    for member in held.included():
        outcome = _member_failed(held, member, _CreateFailure([], TIMEOUT_CODE, reason))
        own = outcome if member is held.request else own
    return own or handoff(held.request)
