"""Poison messages: no ``bms.submit_batch`` message may stop a worker or be redelivered forever.

Why one did: the worker's main process hands each message to its prefork pool by pickling the
arguments, and pickling recurses once per level of nesting. A batch nested 600 levels deep
exceeded the recursion limit there, in the main process, which exited ("Unrecoverable error:
RecursionError"); the unacked message (``acks_late``) went back to the queue, to crash the next
worker the same way. A pool process that dies on a message (killed, out of memory) sends it back
too (``task_reject_on_worker_lost``), for ever.

So, in the main process and before the hand-off (the task's ``Strategy``):

- a message that is not ``[args, kwargs, embed]``, or nested deeper than
  :data:`MAX_MESSAGE_DEPTH`, is answered at once with ``{"errors": [[field, message]]}`` (the
  shape of any invalid batch) and acked: it never reaches the pool;
- each delivery is counted in Redis by task id; a message delivered more than
  ``BMS_MAX_DELIVERIES`` times is acked and recorded in ``dead_letters`` (``GET
  /v1/dead-letters``) with the reason of its last failure, which the task's ``Request`` records
  whenever the main process learns of one (a pool process lost, say).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import redis
from celery import states
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

from models import bounds
from models.db import make_engine, make_session_factory, session_scope
from models.dead_letters import EXCERPT_CHARS, new_dead_letter
from worker.settings import get_settings

log = logging.getLogger("bms.poison")

#: Levels a message may nest: the batch's own bound plus the message's wrapping; a deeper batch
#: is refused in the pool by the spec, with its field path.
MAX_MESSAGE_DEPTH = bounds.MAX_DEPTH + 8
#: How long a message's delivery count and last failure are kept (a week).
COUNT_TTL_SECONDS = 7 * 24 * 3600


def _deliveries_key(task_id: str) -> str:
    return f"bms:poison:{task_id}:deliveries"


def _reason_key(task_id: str) -> str:
    return f"bms:poison:{task_id}:reason"


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5
    )


class RecordingRequest(Request):
    """A request that records why it failed, for the dead letter if it comes to that."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        reason = f"{type(exc).__name__}: {exc}"[:500]
        try:
            _redis().set(_reason_key(self.id), reason, ex=COUNT_TTL_SECONDS)
        except redis.RedisError as error:
            log.warning("could not record why %s failed (%s): %s", self.id, reason, error)
        return super().on_failure(exc_info, send_failed_event, return_ok)


def guarded_strategy(task, app, consumer, **kwargs):
    """Celery's default strategy, behind the checks of this module's docstring."""
    handle = default_strategy(task, app, consumer, **kwargs)
    max_deliveries = get_settings().max_deliveries

    def on_message(message, body, ack, reject, callbacks, **options):
        task_id = str(message.headers.get("id") or "")
        refusal = _refusal(message.payload)
        if refusal is None:
            refusal = _dead_letter_if_spent(task.name, task_id, message.payload, max_deliveries)
        if refusal is None:
            return handle(message, body, ack, reject, callbacks, **options)
        log.error("bms.submit_batch %s refused before the pool: %s", task_id, refusal)
        _answer(task, task_id, refusal)
        ack(log, consumer.connection_errors)
        return None

    return on_message


def _refusal(payload: Any) -> list[tuple[str, str]] | None:
    """Why the message cannot go to the pool (``None``: it can)."""
    if isinstance(payload, dict) and "args" in payload:  # task protocol 1
        payload = [payload.get("args") or [], payload.get("kwargs") or {}, None]
    if not (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict | type(None))
    ):
        return [("<message>", "not a task message: expected [args, kwargs, embed]")]
    deep = bounds.too_deep(payload, MAX_MESSAGE_DEPTH)
    if deep is None:
        return None
    # Name the field as the API would: inside the batch when that is where it is.
    if deep[:2] in ((1, "batch"), (0, 0)):
        field = bounds.field_path(deep[2:])
    else:
        field = "<message>" + bounds.field_path(deep)
    return [(field, f"nested deeper than {bounds.MAX_DEPTH} levels")]


def _dead_letter_if_spent(
    task_name: str, task_id: str, payload: Any, max_deliveries: int
) -> list[tuple[str, str]] | None:
    """Count this delivery; past the budget, record the dead letter and say why."""
    if not task_id:
        return None
    try:
        client = _redis()
        deliveries = client.incr(_deliveries_key(task_id))
        client.expire(_deliveries_key(task_id), COUNT_TTL_SECONDS)
        if deliveries <= max_deliveries:
            return None
        last = client.get(_reason_key(task_id))
    except redis.RedisError as error:
        # Without the count the message runs: a broker that answers is the usual case.
        log.warning("could not count the deliveries of %s: %s", task_id, error)
        return None
    failed = deliveries - 1
    reason = (last or b"").decode(errors="replace") or "its worker process exited each time"
    reason = f"not finished after {failed} deliveries; last failure: {reason}"
    _record(task_name, task_id, failed, reason, payload)
    return [("<message>", f"dead-lettered: {reason}")]


def _record(task_name: str, task_id: str, deliveries: int, reason: str, payload: Any) -> None:
    excerpt = json.dumps(payload, ensure_ascii=True, default=repr)[:EXCERPT_CHARS]
    engine = make_engine(get_settings().database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            session.add(new_dead_letter(task_name, task_id, deliveries, reason, excerpt))
    except Exception:  # the message is acked anyway: never loop on it
        log.exception("could not store the dead letter of %s (%s)", task_id, reason)
    finally:
        engine.dispose()


def _answer(task, task_id: str, errors: list[tuple[str, str]]) -> None:
    """Give a waiting caller the same answer as for an invalid batch."""
    if not task_id:
        return
    try:
        task.backend.store_result(task_id, {"errors": [list(e) for e in errors]}, states.SUCCESS)
    except Exception as error:  # the answer is a courtesy; the refusal stands without it
        log.warning("could not store the answer of %s: %s", task_id, error)
