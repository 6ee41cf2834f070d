"""The one task wrapper of the chain's steps, and what every step shares.

A step is a plain function ``(chain) -> Next | None`` that claims its row, makes a cloud call
and records the result in short transactions (some go on in the same run: see Ownership).
``step_task`` registers it as a Celery task with the project's defaults and returns the plain
function (the unit tests call it). The wrapper handles what is common to all steps:

- no quota now (our limiter) or a 429 (the cloud's): re-scheduled for when capacity returns,
  without spending the failure budget; a step registered with ``capacity_first`` (create,
  attach) holds its slot before it touches the row (a reservation handed over in ``slot``, or
  one taken then), so a run that must wait costs a few Redis calls and no SQL, and comes back
  in turn (see :func:`_come_back`). An attach whose turn is more than a window off also reads
  its request's state (one statement): a cancelled request goes to its cleanup at once, without
  a slot, not after its turn at the quota (2,000 attaches at 100 a minute: the last server
  deleted 20 minutes later). A message waiting that long tells the reconciler it is alive (see
  :func:`_keep_alive`), so a long queue for quota is never taken for a lost chain;
- a step that asks to wait (polling, backoff): re-scheduled with its countdown;
- a transient cloud error: retried with backoff, counted in ``transient_errors``; past the
  budget the request is FAILED at that step;
- any other exception: that request is FAILED with the error's message (the worker goes on);
- a message that does not own the request (see below): it does nothing;
- success: the next step is sent, after the step's transaction committed.

Ownership. Messages are delivered at least once, so two copies of a step may run. The row's
``fence`` is the token of the one live message: every hand-off (to the next step, or to a re-run
of the same step) advances it in the transaction that decides the hand-off, and the message sent
carries the new value. A claim by a message whose token is not the row's raises ``StaleChain``;
so a redelivered step whose hand-off is already done stops at once, and two copies running side
by side collapse into one at the first hand-off. Calls that must not be made twice (create,
attach) are guarded by an intent recorded before the call, which a second copy looks up.
A run that goes on itself instead of handing off (the next volume's attach in ``tasks.attach``,
the tagging stage done at once by ``tasks.finish.at_once``) keeps its message's token: a
redelivery of that message then takes up where the run stopped (a worker killed) instead of
stopping as stale, and whatever it decides is fenced as any claim is.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import redis
from celery import shared_task
from celery.canvas import Signature
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, contains_eager

from bms.exceptions import CloudAPIError, CloudError, Throttled
from models.base import utcnow
from models.db import session_scope
from models.records import (
    ServerRequest,
    StrayServer,
    VolumeAttachment,
    record_note,
    transition,
)
from models.states import ALLOWED_TRANSITIONS, RequestState, Step
from tasks.plan import next_signature
from worker.app import MAX_COUNTDOWN_SECONDS
from worker.limiter import MAX_LEAD_SECONDS, LimiterUnreachable, NoCapacity
from worker.queues import TASK_API_CLASSES
from worker.runtime import runtime

log = logging.getLogger("bms.tasks")
T = TypeVar("T")
S = RequestState

#: Transient errors (5xx, timeouts, 409) tolerated per step before the request is FAILED.
MAX_TRANSIENT_ERRORS = 6
#: Our own infrastructure unreachable for now: the database, or Redis outside the limiter.
INFRASTRUCTURE_DOWN = (OperationalError, redis.ConnectionError, redis.TimeoutError)
#: How many times per ``BMS_RECONCILE_AFTER_SECONDS`` a message waiting for quota says it is
#: alive: often enough that a late run or a clock step never lets the reconciler in first.
KEEP_ALIVES_PER_PATIENCE = 3
#: The code recorded for an exception that is not a cloud error (a bug, an unreadable answer).
INTERNAL_ERROR_CODE = "ORCH.INTERNAL"
#: A run waiting for its turn at the quota that comes back more than this before it (a
#: countdown is capped at MAX_COUNTDOWN_SECONDS) waits on for it, keeping its place.
EARLY_TURN_SECONDS = 0.5


class StaleChain(Exception):
    """The message in hand does not own the request: another message does."""


@dataclass
class ComeBack:
    """When a run denied a slot of its class comes back: after ``seconds``, holding ``slot``
    (booked for it) or at its ``turn`` (epoch seconds) among the runs waiting; neither: after a
    wait spread over the window (the limiter unreachable, or the call of another class)."""

    slot: int | None
    seconds: float
    turn: float | None = None


class TurnedAway(Exception):
    """A ``capacity_first`` run found no slot of its class: how it comes back."""

    def __init__(self, back: ComeBack) -> None:
        super().__init__(f"back in {back.seconds:.3f}s")
        self.back = back


@dataclass
class Wait(Exception):
    """Run this step again after ``seconds`` (a poll, a backoff); not a failure.

    ``progress``: the wait follows a call that moved things on (a job seen running), so the
    transient errors counted before it are forgiven. A wait that only gives the cloud time (a
    look-up that found nothing yet) keeps the count, so that an error that never clears still
    ends the request.
    """

    seconds: float
    reason: str = ""
    progress: bool = True


@dataclass
class Next:
    """What a step hands on: the next signature, sent once the step's transaction committed.

    ``then``: that next step done at once in this run instead, from what the step's
    transaction saw (no message, no claim to load the row again). Only for a step the
    signature names that needs nothing but the row as committed; it returns what to hand on
    after it. Should it raise, the signature is sent after all: the committed row says where
    the chain stands, and the step it names repeats what was done (see :func:`hand_on`).
    """

    signature: Signature | None
    then: Callable[[], Next | None] | None = None


@dataclass
class Chain:
    """The message in hand: the request it is about and the ownership token it carries.

    ``fence`` follows the row: a claim that advanced the token sets it here once committed, so
    that a re-run of the step is sent with the token the row now holds.
    """

    request_id: str
    fence: int
    #: The create job the message's poll is about, as the hand-off saw it (see tasks.plan);
    #: ``None``: not carried, the step reads it from the row.
    job_id: str | None = None
    #: The request needs no stage call but the read-back (no tag, no rename, no volume): its
    #: create poll may make it ACTIVE at once (see ``tasks.poll``). ``False``: not known.
    plain: bool = False

    def owns(self, request: ServerRequest) -> bool:
        return request.fence == self.fence


def jitter(seconds: float) -> float:
    """Spread re-scheduled tasks so that they do not all come back in the same instant."""
    return seconds + random.uniform(0, 0.1 + 0.1 * seconds)


def spread(seconds: float, window_seconds: float) -> float:
    """A denied caller's wait: until the next slot frees, plus a share of the window drawn at
    random, so that the callers denied together come back one by one as slots free."""
    return seconds + random.uniform(0, max(window_seconds, 0.1 + 0.1 * seconds))


def clamp(seconds: float) -> float:
    return min(max(seconds, 0.05), MAX_COUNTDOWN_SECONDS)


@contextmanager
def claim(
    chain: Chain, *, owned: bool = True, attachments: bool = False
) -> Iterator[tuple[Session, ServerRequest]]:
    """One short transaction on the request row, locked.

    ``owned=False`` skips the ownership check: only for recording a fact about the cloud that
    must not be lost whichever message learnt it (a create the cloud accepted); the caller then
    hands off only if ``chain.owns(request)``.

    ``attachments``: the request's volume attachments are read too (the attach steps use them
    all), in the locking statement, and locked with the row (see :func:`_lock_with_attachments`).

    :raises StaleChain: the request is gone, or (``owned``) its token is not the message's.
    """
    with session_scope(runtime().sessions) as session:
        if attachments:
            request = _lock_with_attachments(session, uuid.UUID(chain.request_id))
        else:
            request = session.scalar(_locking(uuid.UUID(chain.request_id)))
        if request is None or (owned and not chain.owns(request)):
            raise StaleChain(chain.request_id)
        held = request.fence
        yield session, request
        advanced = request.fence != held
        token = request.fence
    if advanced:
        chain.fence = token  # committed: the row now expects this token


def _locking(request_id: uuid.UUID):
    """The request's row, locked."""
    query = select(ServerRequest).where(ServerRequest.id == request_id)
    return query.with_for_update(of=ServerRequest)


def _lock_with_attachments(session: Session, request_id: uuid.UUID) -> ServerRequest | None:
    """The request and its attachments in one statement that locks all their rows.

    Every row the statement returns is locked, the attachments' too, not only the request's:
    on PostgreSQL, a statement that waited for a lock returns the locked rows as committed by
    the transaction it waited for, but rows it does not lock as they were in the snapshot taken
    before the wait (a second copy of a step would then act on attachments the first copy
    already changed: a second attach POST). The request's row is locked first, as by every
    writer of both that waits for a lock (the first intent's conditional UPDATE in
    ``tasks.attach`` locks a volume's row alone and waits for no other). A request without
    attachments (the join finds no row) is read and locked alone.
    """
    V = VolumeAttachment
    query = (
        select(ServerRequest)
        .join(ServerRequest.attachments)
        .options(contains_eager(ServerRequest.attachments))
        .where(ServerRequest.id == request_id)
        .order_by(V.position)
        .with_for_update(of=(ServerRequest, V))
    )
    request = session.scalars(query).unique().one_or_none()
    return request if request is not None else session.scalar(_locking(request_id))


def advance(request: ServerRequest) -> None:
    """This transaction hands the request on: the message it sends owns the request."""
    request.fence += 1
    request.restarts = 0  # it moves: the reconciler's count starts again


def handoff(request: ServerRequest, countdown: float | None = None) -> Next:
    """Advance the token and name the step that comes next (or none)."""
    advance(request)
    return Next(next_signature(request, countdown))


def fail(
    session: Session,
    request: ServerRequest,
    step: Step,
    code: str | None,
    message: str,
) -> None:
    """FAILED at ``step``, keeping the code and message; a retry resumes there."""
    request.failed_step = step
    request.last_error_code = code
    request.last_error_message = message[:2000]
    transition(session, request, S.FAILED, detail=f"{step.value}: {code} {message}"[:2000])


def error_code_of(exc: CloudError) -> str:
    return exc.error_code if isinstance(exc, CloudAPIError) else type(exc).__name__


def give_up(session: Session, request: ServerRequest, step: Step, code: str, message: str) -> None:
    """End whatever the request was doing, for a reason no retry will change.

    An unfinished request is FAILED at ``step`` (a create that may be in the cloud stays
    recorded, for the retry to look up). A finished one (cancelled or failed) that was
    still cleaning up stops: the server it was deleting is named in its error, for an operator,
    and a create job it was watching is handed to the stray sweeper.
    """
    if request.state is S.CANCELLED and request.create_intent_at and not request.job_id:
        # A create whose answer was lost may have made a server: the sweeper looks for it by
        # its marker. (A FAILED request keeps its intent: the marker is how a retry finds that
        # create, instead of creating a second server beside it.)
        why = f"create with marker {request.create_marker} given up ({message})"
        session.add(StrayServer(request_id=request.id, marker=request.create_marker, reason=why))
    if request.state is S.CANCELLED:
        request.create_intent_at = None
    if request.job_id and request.state is S.CANCELLED:
        stray = StrayServer(request_id=request.id, create_job_id=request.job_id, reason=message)
        session.add(stray)
        request.job_id = None
    if request.cleanup_server_id:
        message = f"server {request.cleanup_server_id} not deleted ({message}): delete it by hand"
        request.cleanup_server_id = request.cleanup_job_id = None
    request.last_error_code, request.last_error_message = code, message[:2000]
    if S.FAILED in ALLOWED_TRANSITIONS[request.state]:
        fail(session, request, step, code, message)
    else:
        record_note(session, request, f"{code}: {message}"[:2000])


def step_task(name: str, step: Step, *, capacity_first: bool = False) -> Callable:
    """Register a step function as the Celery task ``name``, on the queue of its API class.

    ``capacity_first``: the task holds a slot of its class before the step runs (see the
    module's docstring); a message may carry a reserved one in ``slot``.
    """
    api_class = TASK_API_CLASSES[name]

    def decorate(body: Callable[[Chain], Next | None]):
        @shared_task(
            name=name,
            bind=True,
            acks_late=True,
            ignore_result=True,
            max_retries=None,  # budgets are counted by the wrapper, not by Celery
        )
        @functools.wraps(body)
        def run(
            self,
            *,
            request_id: str,
            fence: int,
            transient_errors: int = 0,
            slot: int | None = None,
            queued: float | None = None,
            alive_at: float | None = None,
            job_id: str | None = None,
            plain: bool = False,
        ) -> None:
            chain = Chain(request_id, fence, job_id, plain)
            retry = functools.partial(_retry, self, chain, alive_at=alive_at)
            try:
                holding = _holding(
                    api_class if capacity_first else None,
                    slot,
                    self.request.eta,
                    # A create that waits has no server to delete yet: a cancel is seen when
                    # its slot comes, and waiting creates cost no statement (10,000 queued).
                    cancellable=chain if step is not Step.CREATE else None,
                    queued=queued,
                )
                with holding:
                    outcome = body(chain)
            except StaleChain:
                log.info("%s %s: not the owner (token %s), stopping", name, request_id, fence)
                return
            except (TurnedAway, NoCapacity) as exc:
                back = exc.back if isinstance(exc, TurnedAway) else None
                alive_at = _keep_alive(chain, alive_at)
                if alive_at is None:
                    if back is not None and back.slot is not None:
                        runtime().limiter.release(api_class, [back.slot])
                    log.info("%s %s: not the owner (token %s), stopping", name, request_id, fence)
                    return
                retry = functools.partial(_retry, self, chain, alive_at=alive_at)
                if back is None and not capacity_first:  # a poll: back when its class allows
                    raise retry(transient_errors, exc.wait_seconds) from None
                back = back or _come_back(api_class, exc, queued)
                raise retry(
                    transient_errors, back.seconds, jittered=True, slot=back.slot, queued=back.turn
                ) from None
            except Throttled as exc:
                # The class of the call that was throttled, which may not be the task's.
                runtime().limiter.back_off(exc.api_class or api_class, exc.retry_after)
                raise retry(transient_errors, exc.retry_after or 5.0) from None
            except Wait as exc:
                raise retry(0 if exc.progress else transient_errors, exc.seconds) from None
            except CloudError as exc:
                if not exc.transient or transient_errors >= MAX_TRANSIENT_ERRORS:
                    _end_step(chain, step, error_code_of(exc), str(exc))
                    return
                log.warning("%s %s: %s, retrying", name, request_id, exc)
                raise retry(transient_errors + 1, 2.0**transient_errors) from None
            except INFRASTRUCTURE_DOWN as exc:
                # The database or Redis is unreachable (restarting, say): nothing can be done
                # or recorded now, and it is no fault of the request's: never FAILED for it.
                if transient_errors >= MAX_TRANSIENT_ERRORS:
                    log.error("%s %s: %s unusable (%s); the reconciler takes over",
                              name, request_id, _which(exc), exc)  # fmt: skip
                    return
                raise retry(transient_errors + 1, 2.0**transient_errors) from None
            except Exception as exc:
                log.exception("%s %s: unexpected error", name, request_id)
                _end_step(chain, step, INTERNAL_ERROR_CODE, _describe(exc))
                return
            hand_on(outcome)

        body.task = run  # the registered task; the function itself stays callable for tests
        return body

    return decorate


def hand_on(outcome: Next | None) -> None:
    """Send what a step hands on, or do it now when the step says how (``Next.then``).

    A step done at once that fails in any way (a cloud error, no quota now, the database)
    leaves its row as the previous step committed it: its message is sent after all, and
    that run meets the error with the step's own retries and budget. A step done at once that
    finds another message owns the request stops, as that message's run would.
    """
    while outcome is not None and outcome.signature is not None:
        if outcome.then is None:
            outcome.signature.apply_async()
            return
        try:
            following = outcome.then()
        except StaleChain:
            return
        except Throttled as exc:
            if exc.api_class:
                runtime().limiter.back_off(exc.api_class, exc.retry_after)
            outcome.signature.apply_async()
            return
        except Exception as exc:  # noqa: BLE001 - any failure: the message does it properly
            log.info("%s done at once failed (%s): sending it", outcome.signature.task, exc)
            outcome.signature.apply_async()
            return
        outcome = following


def send_each(items: Iterable[T], signature_of: Callable[[T], Signature | None]) -> int:
    """Send the signature each item gives (``None``: nothing to send); returns how many were
    sent. A broker that cannot be reached stops the round: nothing is lost, the rows are
    committed and the reconciler's next run sends the rest."""
    sent = 0
    for item in items:
        signature = signature_of(item)
        if signature is None:
            continue
        try:
            signature.apply_async()
        except BrokerError as exc:
            log.warning("broker unreachable (%s): the reconciler sends the rest", exc)
            break
        sent += 1
    return sent


def _which(exc: BaseException) -> str:
    return "database" if isinstance(exc, OperationalError) else "Redis"


def _describe(exc: BaseException) -> str:
    """The exception and where it was raised, in one line for the request's error."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _holding(
    api_class: str | None,
    slot: int | None,
    eta: str | datetime | None = None,
    cancellable: Chain | None = None,
    queued: float | None = None,
):
    """The slot a ``capacity_first`` step holds while it runs (none for other steps).

    A message with a booked slot and an ETA also tells the limiter how late after its ETA it
    started: the feeder sends the next ones that much ahead of their slot's instant. With no
    slot free, the run is turned away with the way it comes back (:func:`_come_back`; ``queued``:
    the turn it carries). A ``cancellable`` request that must wait for a turn reads its state
    first: cancelled, it runs without a slot (its claim hands it to its cleanup, which needs
    none). One that comes back with a booked slot does not: its claim sees a cancel within a
    window.

    :raises TurnedAway: no slot now (and the request, if ``cancellable``, not cancelled).
    """
    limiter = runtime().limiter if api_class else None
    if limiter is None:
        return nullcontext()
    pickup = None
    if slot is not None and eta is not None:
        due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
        due = due if due.tzinfo else due.replace(tzinfo=UTC)  # Celery's are UTC
        pickup = (datetime.now(UTC) - due).total_seconds()
    held = ExitStack()
    try:
        # The pickup is sampled in the round trip that adopts the slot.
        held.enter_context(limiter.hold(api_class, slot, pickup=pickup))
    except NoCapacity as denied:
        back = _come_back(api_class, denied, queued)
        if back.slot is not None and back.seconds <= MAX_LEAD_SECONDS:
            # Its instant is as near as a message sent for it would start after it: this run
            # holds the slot (its call waits for the instant) instead of sending itself again.
            held.enter_context(limiter.hold(api_class, back.slot))
            return held
        # Back within a window, its next run sees a cancel; waiting longer, it looks now.
        soon = back.slot is not None or back.seconds <= denied.window_seconds
        if soon or cancellable is None or not _cancelled(cancellable):
            raise TurnedAway(back) from denied
    return held


def _come_back(api_class: str, denied: NoCapacity, queued: float | None) -> ComeBack:
    """When a denied ``capacity_first`` run comes back: with the next slot of its class booked
    for it, a pickup before its instant; or at its turn among the runs turned away
    (``GlobalLimiter.turn``), whose instant its re-run carries in ``queued``.

    A run turned away for the first time books only when no run waits before it; otherwise it
    takes its turn behind them. A run back before its turn (a countdown is capped) keeps it; at
    its turn it books the next slot that frees within a window, or takes a new turn when all of
    them are booked. A booked slot whose instant is near is held by the run at once (see
    :func:`_holding`).

    Why: a retry spread at random over the window lets a freed slot idle until some waiting run
    happens to come back, and lets runs turned away last take the slots of those turned away
    first. At the end of a batch's attaches (1,000 at 100 per 10 s) the last windows were
    filled over their whole length, and some servers' attaches waited 80 s while others waited
    none: the last attach came 15 s after its bound.
    """
    limiter = runtime().limiter
    spread_wait = spread(denied.wait_seconds, denied.window_seconds)
    if limiter is None or denied.api_class != api_class or isinstance(denied, LimiterUnreachable):
        return ComeBack(None, spread_wait)
    now = time.time()
    try:
        if queued is None:
            ahead_of_it = limiter.turn(api_class, 0.0, behind_others=True)
            if ahead_of_it > 0:
                return ComeBack(None, ahead_of_it, now + ahead_of_it)
        elif queued - now > EARLY_TURN_SECONDS:
            return ComeBack(None, queued - now, queued)
        booking = limiter.reserve(api_class, 1, ahead=denied.window_seconds)
        if not booking.entries:
            turn = limiter.turn(api_class, max(booking.wait_seconds, denied.wait_seconds))
            return ComeBack(None, turn, now + turn)
    except LimiterUnreachable:
        return ComeBack(None, spread_wait)
    delay = booking.delays[0]
    if delay > 0:
        # Sent a pickup ahead of the instant: its call waits for the instant (``acquire``).
        delay = max(delay - limiter.lead(api_class), 0.0)
    return ComeBack(booking.entries[0], delay)


def _cancelled(chain: Chain) -> bool:
    """Whether the chain's request was cancelled (one statement, no lock)."""
    query = select(ServerRequest.state).where(ServerRequest.id == uuid.UUID(chain.request_id))
    with session_scope(runtime().sessions) as session:
        return session.scalar(query) is S.CANCELLED


def _keep_alive(chain: Chain, alive_at: float | None) -> float | None:
    """When the row was last touched for this waiting message, touching it again when the
    reconciler would soon take the request for stalled; ``None``: the message is stale.

    The reconciler rebuilds a request whose row has not changed for
    ``BMS_RECONCILE_AFTER_SECONDS``, and ends it after ``BMS_MAX_RESTARTS`` rebuilds. A message
    that waits for quota (say 2,000 attaches at 100 a minute) changes nothing meanwhile, so it
    says it is alive a few times per that period: one UPDATE, none while the last is recent.
    """
    now = time.time()
    patience = runtime().settings.reconcile_after_seconds
    if alive_at is not None and now - alive_at < patience / KEEP_ALIVES_PER_PATIENCE:
        return alive_at
    with session_scope(runtime().sessions) as session:
        touched = session.execute(
            update(ServerRequest)
            .where(ServerRequest.id == uuid.UUID(chain.request_id))
            .where(ServerRequest.fence == chain.fence)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
    return now if touched else None


def _retry(
    task,
    chain: Chain,
    transient_errors: int,
    seconds: float,
    jittered: bool = False,
    *,
    alive_at: float | None = None,
    slot: int | None = None,
    queued: float | None = None,
):
    kwargs = {
        "request_id": chain.request_id,
        "fence": chain.fence,
        "transient_errors": transient_errors,
        "alive_at": alive_at,
    }
    if chain.job_id is not None:
        kwargs["job_id"] = chain.job_id
    if chain.plain:
        kwargs["plain"] = True
    if slot is not None:  # booked for the re-run: it comes back at the slot's instant
        kwargs["slot"] = slot
    if queued is not None:  # the instant of its turn among the runs waiting for quota
        kwargs["queued"] = queued
    countdown = clamp(seconds if jittered else jitter(seconds))
    return task.retry(kwargs=kwargs, countdown=countdown, max_retries=None)


def _end_step(chain: Chain, step: Step, code: str, message: str) -> None:
    """The step cannot go on: end the request's current work with the reason, if still ours."""
    try:
        with claim(chain) as (session, request):
            give_up(session, request, step, code, message)
    except StaleChain:
        pass
