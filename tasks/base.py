"""The one task wrapper of the chain's steps, and what every step shares.

A step is a plain function ``(request_id, fence) -> Next | None`` that claims its row, makes one
cloud call and records the result in short transactions. The wrapper turns it into a Celery
task with the project's defaults and handles what is common to all steps:

- no quota now (our limiter) or a 429 (the cloud's): re-scheduled for when capacity returns,
  without spending the failure budget;
- a step that asks to wait (polling, backoff): re-scheduled with its countdown;
- a transient cloud error: retried with backoff, counted in ``transient_errors``; past the
  budget the request is FAILED at that step;
- a stale fencing token: the chain stops;
- success: the next step is sent, after the step's transaction committed.
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import shared_task
from celery.canvas import Signature
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from bms.exceptions import CloudAPIError, CloudError, Throttled
from models.db import session_scope
from models.records import ServerRequest, transition
from models.states import ALLOWED_TRANSITIONS, RequestState, Step
from worker.app import MAX_COUNTDOWN_SECONDS
from worker.limiter import NoCapacity
from worker.queues import TASK_API_CLASSES
from worker.runtime import runtime

log = logging.getLogger("bms.tasks")

#: Transient errors (5xx, timeouts, 409) tolerated per step before the request is FAILED.
MAX_TRANSIENT_ERRORS = 6


class StaleChain(Exception):
    """The row's fencing token moved on: another chain owns the request now."""


@dataclass
class Wait(Exception):
    """Run this step again after ``seconds`` (a poll, a backoff); not a failure."""

    seconds: float
    reason: str = ""


@dataclass
class Next:
    """What a step hands on: the next signature, sent once the step's transaction committed."""

    signature: Signature | None


def jitter(seconds: float) -> float:
    """Spread re-scheduled tasks so that they do not all come back in the same instant."""
    return seconds + random.uniform(0, 0.1 + 0.1 * seconds)


def clamp(seconds: float) -> float:
    return min(max(seconds, 0.05), MAX_COUNTDOWN_SECONDS)


@contextmanager
def claim(request_id: str, fence: int | None) -> Iterator[tuple[Session, ServerRequest]]:
    """One short transaction on the request row, locked, owned by this chain.

    ``fence=None`` skips the ownership check: only for recording a fact about the cloud that
    must not be lost whichever chain learnt it (a create the cloud accepted).

    :raises StaleChain: the row's fence is not ``fence``.
    """
    with session_scope(runtime().sessions) as session:
        request = session.scalar(
            select(ServerRequest)
            .where(ServerRequest.id == uuid.UUID(request_id))
            .options(selectinload(ServerRequest.attachments))
            .with_for_update()
        )
        if request is None or (fence is not None and request.fence != fence):
            raise StaleChain(request_id)
        yield session, request


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
    transition(session, request, RequestState.FAILED, detail=f"{step.value}: {code} {message}")


def error_code_of(exc: CloudError) -> str:
    return exc.error_code if isinstance(exc, CloudAPIError) else type(exc).__name__


def step_task(name: str, step: Step) -> Callable:
    """Make a step function a Celery task named ``name``, on the queue of its API class."""
    api_class = TASK_API_CLASSES[name]

    def decorate(body: Callable[..., Next | None]):
        @shared_task(
            name=name,
            bind=True,
            acks_late=True,
            ignore_result=True,
            max_retries=None,  # budgets are counted by the wrapper, not by Celery
        )
        @functools.wraps(body)
        def run(self, *, request_id: str, fence: int, transient_errors: int = 0) -> None:
            retry = functools.partial(_retry, self, request_id, fence)
            try:
                outcome = body(request_id=request_id, fence=fence)
            except StaleChain:
                log.info("%s %s: stale chain (fence %s), stopping", name, request_id, fence)
                return
            except NoCapacity as exc:
                raise retry(transient_errors, exc.wait_seconds) from None
            except Throttled as exc:
                runtime().limiter.back_off(api_class, exc.retry_after)
                raise retry(transient_errors, exc.retry_after or 5.0) from None
            except Wait as exc:
                raise retry(transient_errors, exc.seconds) from None
            except CloudError as exc:
                if not exc.transient or transient_errors >= MAX_TRANSIENT_ERRORS:
                    _fail_step(request_id, fence, step, exc)
                    return
                log.warning("%s %s: %s, retrying", name, request_id, exc)
                raise retry(transient_errors + 1, 2.0**transient_errors) from None
            if outcome is not None and outcome.signature is not None:
                outcome.signature.apply_async()

        return run

    return decorate


def _retry(task, request_id: str, fence: int, transient_errors: int, seconds: float):
    kwargs = {"request_id": request_id, "fence": fence, "transient_errors": transient_errors}
    return task.retry(kwargs=kwargs, countdown=clamp(jitter(seconds)), max_retries=None)


def _fail_step(request_id: str, fence: int, step: Step, exc: CloudError) -> None:
    try:
        with claim(request_id, fence) as (session, request):
            if RequestState.FAILED in ALLOWED_TRANSITIONS[request.state]:
                fail(session, request, step, error_code_of(exc), str(exc))
    except StaleChain:
        pass
