"""A request's final transition adds its webhook delivery, in the same transaction.

One place sees every transition: the ``Event`` row that :func:`models.records.transition`
adds. A session listener looks at the events about to be flushed; for each one that ends a
request's work, of a batch whose ``notify`` asked for request events, it adds a
:class:`~models.webhooks.WebhookDelivery`. So the delivery exists exactly when the transition
committed, whichever process made it, and no step carries a hook of its own.

Which event: the end of provisioning (ACTIVE, FAILED or CANCELLED) is ``request.finished``;
the end of a teardown (out of TEARING_DOWN: TORN_DOWN, or FAILED or CANCELLED) is
``request.torn_down``. A teardown never sends a second ``request.finished`` for a request
whose provisioning already ended.

The ids of the new deliveries are left in ``session.info[NEW_DELIVERIES]``; the tasks layer
(``tasks/webhooks.py``) sends their messages after the commit. Where it is not loaded, the
webhook scan sends them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from models.base import utcnow
from models.records import Event, ServerRequest
from models.states import TERMINAL_STATES, RequestState
from models.webhooks import WebhookDelivery, WebhookEvent, WebhookTarget

#: ``session.info`` key: ids of deliveries added in the current transaction.
NEW_DELIVERIES = "bms_new_webhook_deliveries"
#: ``session.info`` key: request id -> batch id, of requests a writer changed without loading
#: them (a Core ``UPDATE``), so that a batch known to have no target needs no load of the row.
BATCH_OF = "bms_batch_of_request"
#: Batches this process found without a webhook target. A target is stored with its batch, in
#: the intake's transaction, and never added later: such a batch will never have one, and its
#: requests' final transitions need not look again (one SELECT per server saved). Bounded: the
#: set starts again past this many.
NO_TARGET_LIMIT = 10_000
_no_target: set[uuid.UUID] = set()


def request_payload(
    delivery_id: uuid.UUID,
    request: ServerRequest,
    event: WebhookEvent = WebhookEvent.REQUEST_FINISHED,
) -> dict:
    """The body of a request event: the request as it ends, no secret."""
    return {
        "id": str(delivery_id),
        "type": event.value,
        "created_at": utcnow().isoformat(),
        "batch_id": str(request.batch_id),
        "request": {
            "id": str(request.id),
            "name": request.name,
            "position": request.position,
            "state": request.state.value,
            "server_id": request.server_id,
            "failed_step": request.failed_step.value if request.failed_step else None,
            "error_code": request.last_error_code,
            "error_message": request.last_error_message,
        },
    }


def batch_of(session: Session) -> dict[uuid.UUID, uuid.UUID]:
    """Where a writer names the batch of a request it changed without loading it."""
    return session.info.setdefault(BATCH_OF, {})


def webhook_event(transition: Event) -> WebhookEvent | None:
    """The request event a transition makes, if any."""
    return _webhook_event(transition.from_state, transition.to_state)


def _webhook_event(from_state, to_state) -> WebhookEvent | None:
    if from_state is None or from_state == to_state:
        return None
    if from_state == RequestState.TEARING_DOWN:
        return WebhookEvent.REQUEST_TORN_DOWN
    if to_state in TERMINAL_STATES:
        return WebhookEvent.REQUEST_FINISHED
    return None


def add_event(
    session: Session,
    request_id: uuid.UUID,
    from_state: RequestState,
    to_state: RequestState,
    detail: str,
    at: datetime,
) -> None:
    """Append the event of a transition made without loading the request (a Core ``UPDATE``).

    One that makes no webhook event, or whose request's batch (named in :func:`batch_of`) is
    known to have no webhook target, is a Core ``INSERT``, sent now: no flush of the ORM's unit
    of work for it at the commit (issue 11). Any other is added to the session, where the
    listener below sees it, as any transition's."""
    if _webhook_event(from_state, to_state) is not None and not _known_without_target(
        session, request_id
    ):
        session.add(Event(request_id=request_id, from_state=from_state, to_state=to_state,
                          detail=detail, at=at))  # fmt: skip
        return
    row = {"request_id": request_id, "from_state": from_state, "to_state": to_state,
           "detail": detail, "at": at}  # fmt: skip
    session.execute(_ADD_EVENT, row)


def _known_without_target(session: Session, request_id: uuid.UUID) -> bool:
    batch_id = session.info.get(BATCH_OF, {}).get(request_id)
    return batch_id is not None and batch_id in _no_target


#: Built once: its cache key is computed once, not per event.
_ADD_EVENT = insert(Event.__table__)


def _finishing_events(session: Session) -> list[Event]:
    return [obj for obj in session.new if isinstance(obj, Event) and webhook_event(obj) is not None]


@event.listens_for(Session, "before_flush")
def _add_request_deliveries(session: Session, _context, _instances) -> None:
    events = _finishing_events(session)
    if not events:
        return
    targets: dict[uuid.UUID, WebhookTarget | None] = {}
    with session.no_autoflush:
        for finished in events:
            if _known_without_target(session, finished.request_id):
                continue
            request = session.get(ServerRequest, finished.request_id)
            if request is None or request.batch_id in _no_target:
                continue
            if request.batch_id not in targets:
                targets[request.batch_id] = session.get(WebhookTarget, request.batch_id)
            target = targets[request.batch_id]
            if target is None:
                if len(_no_target) >= NO_TARGET_LIMIT:
                    _no_target.clear()
                _no_target.add(request.batch_id)
            if target is None or not target.request_events:
                continue
            delivery_id, kind = uuid.uuid4(), webhook_event(finished)
            session.add(
                WebhookDelivery(
                    id=delivery_id,
                    batch_id=request.batch_id,
                    request_id=request.id,
                    event=kind,
                    dedupe_key=f"{kind.value}:{delivery_id}",
                    payload=request_payload(delivery_id, request, kind),
                    next_attempt_at=utcnow(),
                )
            )
            session.info.setdefault(NEW_DELIVERIES, []).append(delivery_id)
