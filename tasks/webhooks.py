"""Webhook delivery: find completed batches, POST each event signed, retry for up to 24 hours.

Deliveries run on the ``bms.webhook`` queue, consumed by workers of their own: a receiver that
is slow or down costs webhook slots only, never a provisioning step. The scan runs on
``bms.control``, so that it is never queued behind attempts waiting on a dead receiver.
Messages carry a delivery id and nothing else; the task reads the URL and the secret from the
database.

- ``bms.webhook_scan`` (beat): a batch with a ``notify`` whose requests have all settled gets
  its ``batch.completed`` delivery (once per completion: a retried batch completes again), and
  any delivery that is due but whose message was lost is sent again. ``batch.completed`` is
  about provisioning: a teardown neither holds it back nor makes a new one (its requests each
  send ``request.torn_down``, see ``models/outbox.py``).
- ``bms.deliver_webhook``: one attempt. It first takes a lease on the row (one conditional
  UPDATE), so a duplicate message never POSTs twice; a 2xx marks the delivery DELIVERED; any
  other answer, or none, schedules the next attempt with exponential back-off (capped at ten
  minutes), until 24 hours after the event, when the delivery is FAILED.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from celery import shared_task
from sqlalchemy import and_, event, exists, func, or_, select, update
from sqlalchemy.orm import Session

from models.base import as_utc, utcnow
from models.db import session_scope
from models.outbox import NEW_DELIVERIES
from models.records import Batch, ServerRequest
from models.states import IN_FLIGHT_STATES, RequestState
from models.webhooks import DeliveryState, WebhookDelivery, WebhookEvent, WebhookTarget
from worker.app import MAX_COUNTDOWN_SECONDS, app
from worker.queues import WEBHOOK_QUEUE
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.webhooks")

#: How long a receiver is tried before the delivery is FAILED.
RETRY_PERIOD = timedelta(hours=24)
#: First back-off, doubled per attempt up to the cap (both scaled by ``BMS_DELAY_SCALE``).
FIRST_BACKOFF_SECONDS = 5.0
MAX_BACKOFF_SECONDS = float(MAX_COUNTDOWN_SECONDS)
#: (connect, read) timeouts of one POST; the lease outlasts both.
TIMEOUT = (3.05, 10.0)
LEASE = timedelta(seconds=30)
#: A due delivery is re-sent by the scan only this late (its message is then surely lost).
RESEND_GRACE_SECONDS = 60.0
#: Rows one scan looks at, each kind; the rest wait for the next scan.
SCAN_LIMIT = 500
SIGNATURE_HEADER = "X-BMS-Signature"
USER_AGENT = "bms-orchestrator-webhooks/1"

_http = requests.Session()


# -- signing -----------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` under the batch's secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def encode(payload: dict) -> bytes:
    """The exact bytes POSTed (and signed)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# -- settling: which batches are done -----------------------------------------------------------


#: Requests still being provisioned (a teardown is not: see the module's docstring).
PROVISIONING_STATES = IN_FLIGHT_STATES - {RequestState.TEARING_DOWN}


def unsettled():
    """A request whose provisioning is not done: not final, a server left to delete, or a
    cancelled create still in the cloud. A teardown under way does not count."""
    return or_(
        ServerRequest.state.in_(sorted(PROVISIONING_STATES)),
        ServerRequest.cleanup_server_id.is_not(None),
        and_(ServerRequest.state == RequestState.CANCELLED, ServerRequest.job_id.is_not(None)),
    )


def batch_payload(session: Session, delivery_id: uuid.UUID, batch: Batch, completion: int):
    counts = dict.fromkeys((s.value for s in RequestState), 0)
    for state, number in session.execute(
        select(ServerRequest.state, func.count())
        .where(ServerRequest.batch_id == batch.id)
        .group_by(ServerRequest.state)
    ):
        counts[state.value] = number
    failures = session.execute(
        select(
            ServerRequest.last_error_code,
            func.min(ServerRequest.last_error_message),
            func.count(),
        )
        .where(ServerRequest.batch_id == batch.id, ServerRequest.state == RequestState.FAILED)
        .group_by(ServerRequest.last_error_code)
        .order_by(func.count().desc())
        .limit(20)
    )
    return {
        "id": str(delivery_id),
        "type": WebhookEvent.BATCH_COMPLETED.value,
        "created_at": utcnow().isoformat(),
        "completion": completion,
        "batch": {
            "id": str(batch.id),
            "name": batch.name,
            "total": sum(counts.values()),
            "counts": counts,
            "failures": [
                {"code": code, "message": message, "count": number}
                for code, message, number in failures
            ],
        },
    }


def complete_batch(session: Session, batch_id: uuid.UUID) -> uuid.UUID | None:
    """In the caller's transaction: if the batch's target is open and every request settled,
    close it and add its ``batch.completed`` delivery; returns the delivery's id."""
    target = session.scalar(
        select(WebhookTarget).where(WebhookTarget.batch_id == batch_id).with_for_update()
    )
    if target is None or not target.open:
        return None
    if session.scalar(select(exists().where(ServerRequest.batch_id == batch_id, unsettled()))):
        return None
    target.open = False
    target.completions += 1
    delivery_id = uuid.uuid4()
    payload = batch_payload(session, delivery_id, session.get(Batch, batch_id), target.completions)
    session.add(
        WebhookDelivery(
            id=delivery_id,
            batch_id=batch_id,
            event=WebhookEvent.BATCH_COMPLETED,
            dedupe_key=f"{WebhookEvent.BATCH_COMPLETED.value}:{batch_id}:{target.completions}",
            payload=payload,
            next_attempt_at=utcnow(),
        )
    )
    return delivery_id


def reopen_retried(session: Session) -> int:
    """Targets closed while their batch runs again (an operator's retry): open them."""
    running = select(ServerRequest.batch_id).where(
        ServerRequest.state.in_(sorted(PROVISIONING_STATES))
    )
    result = session.execute(
        update(WebhookTarget)
        .where(WebhookTarget.open.is_(False), WebhookTarget.batch_id.in_(running))
        .values(open=True, updated_at=utcnow())
    )
    return result.rowcount or 0


@shared_task(name="bms.webhook_scan", ignore_result=True, acks_late=True)
def webhook_scan() -> dict[str, int]:
    """Beat task: completion events of settled batches; lost messages of due deliveries."""
    sessions = runtime().sessions
    with session_scope(sessions) as session:
        reopened = reopen_retried(session)
        open_ids = list(
            session.scalars(
                select(WebhookTarget.batch_id)
                .where(WebhookTarget.open.is_(True))
                .order_by(WebhookTarget.created_at)
                .limit(SCAN_LIMIT)
            )
        )
    completed = []
    for batch_id in open_ids:
        with session_scope(sessions) as session:
            delivery_id = complete_batch(session, batch_id)
        if delivery_id is not None:
            completed.append(delivery_id)
    send(completed)
    resent = send(_overdue(sessions))
    return {"reopened": reopened, "completed": len(completed), "resent": resent}


def _overdue(sessions) -> list[uuid.UUID]:
    now = utcnow()
    cutoff = now - timedelta(seconds=RESEND_GRACE_SECONDS * runtime().settings.delay_scale)
    with session_scope(sessions) as session:
        return list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state == DeliveryState.PENDING,
                    WebhookDelivery.next_attempt_at <= cutoff,
                    or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(SCAN_LIMIT)
            )
        )


# -- sending messages --------------------------------------------------------------------------


def send(delivery_ids: Iterable[uuid.UUID], countdown: float | None = None) -> int:
    """Send one ``bms.deliver_webhook`` message per id; a broker that cannot be reached only
    delays them (the scan sends due deliveries again)."""
    sent = 0
    for delivery_id in delivery_ids:
        options = {"countdown": countdown} if countdown else {}
        try:
            app.signature(
                "bms.deliver_webhook",
                kwargs={"delivery_id": str(delivery_id)},
                immutable=True,
                ignore_result=True,
                queue=WEBHOOK_QUEUE,
                **options,
            ).apply_async(retry=False)
        except Exception as exc:  # noqa: BLE001 - any broker trouble: the scan covers it
            log.warning("webhook %s not sent now (%s); the scan will", delivery_id, exc)
            break
        sent += 1
    return sent


@event.listens_for(Session, "after_commit")
def _send_committed(session: Session) -> None:
    """Deliveries added by a final transition go out as soon as that transition committed."""
    new = session.info.pop(NEW_DELIVERIES, None)
    if new:
        send(new)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(NEW_DELIVERIES, None)


# -- one attempt -------------------------------------------------------------------------------


def backoff_seconds(attempts: int, scale: float) -> float:
    """Before attempt ``attempts + 1``: 5 s, 10 s, 20 s ... capped at 10 minutes (scaled)."""
    base = min(FIRST_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)
    return base * scale * random.uniform(1.0, 1.2)


def _lease(session: Session, delivery_id: uuid.UUID) -> bool:
    """Take the attempt: due, PENDING, and nobody else's attempt under way."""
    now = utcnow()
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= now + timedelta(seconds=1),
            or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now),
        )
        .values(leased_until=now + LEASE)
    )
    return result.rowcount == 1


def post(url: str, secret: str | None, delivery: WebhookDelivery) -> tuple[int | None, str]:
    """POST the event once; returns the status (None: no answer) and a short error."""
    body = encode(delivery.payload)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-BMS-Event": delivery.event.value,
        "X-BMS-Delivery": str(delivery.id),
        "X-BMS-Attempt": str(delivery.attempts + 1),
        "X-BMS-Timestamp": timestamp,
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    try:
        response = _http.post(
            url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        return None, type(exc).__name__
    response.close()
    error = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return response.status_code, error


def _where(url: str) -> str:
    """The receiver for a log line: scheme, host and port only (a path may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@shared_task(name="bms.deliver_webhook", ignore_result=True, acks_late=True)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at one delivery; returns what became of it."""
    current = runtime()
    identifier = uuid.UUID(delivery_id)
    with session_scope(current.sessions) as session:
        if not _lease(session, identifier):
            return "skipped"
        delivery = session.get(WebhookDelivery, identifier)
        target = session.get(WebhookTarget, delivery.batch_id)
        url, secret = target.url, target.secret
    status, error = post(url, secret, delivery)
    accepted = status is not None and 200 <= status < 300
    if current.metrics is not None:
        current.metrics.webhook("delivered" if accepted else "failed")
    countdown = None
    with session_scope(current.sessions) as session:
        delivery = session.get(WebhookDelivery, identifier)
        delivery.attempts += 1
        delivery.last_status, delivery.last_error = status, error or None
        delivery.leased_until = None
        now = utcnow()
        if accepted:
            delivery.state, delivery.delivered_at = DeliveryState.DELIVERED, now
        else:
            wait = backoff_seconds(delivery.attempts, current.settings.delay_scale)
            if now + timedelta(seconds=wait) > as_utc(delivery.created_at) + RETRY_PERIOD:
                delivery.state = DeliveryState.FAILED
            else:
                delivery.next_attempt_at = now + timedelta(seconds=wait)
                countdown = wait
        state = delivery.state
    if countdown is not None:
        log.info("webhook %s to %s: %s, again in %.1fs", delivery_id, _where(url), error, countdown)
        send([identifier], countdown=countdown)
    elif state is DeliveryState.FAILED:
        log.warning("webhook %s to %s: given up after 24 h (%s)", delivery_id, _where(url), error)
    return state.value
