"""Intake: store a validated batch as requests, then start it (preflight, then their chains).

Shared by the REST API, the command line and the ``bms.submit_batch`` task, so that a batch is
stored the same way whichever door it came through: all of it or nothing, and once per
idempotency key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.db import session_scope
from models.records import (
    Batch,
    BatchSource,
    ServerRequest,
    VolumeAttachment,
    record_creation,
)
from models.spec import BatchSpec, SpecError, parse_batch
from models.webhooks import WebhookTarget
from tasks.preflight import send_start
from worker.runtime import runtime


@dataclass
class Submitted:
    batch_id: uuid.UUID
    request_ids: list[uuid.UUID]
    created: bool  # False: an earlier submission with the same idempotency key


def _existing(session: Session, idempotency_key: str | None) -> Submitted | None:
    if not idempotency_key:
        return None
    batch = session.scalar(select(Batch).where(Batch.idempotency_key == idempotency_key))
    if batch is None:
        return None
    return Submitted(batch.id, [r.id for r in batch.requests], created=False)


def store_batch(
    session: Session,
    spec: BatchSpec,
    source: BatchSource,
    idempotency_key: str | None = None,
) -> Submitted:
    """Add the batch and one request per server to ``session`` (the caller commits)."""
    existing = _existing(session, idempotency_key)
    if existing is not None:
        return existing
    batch = Batch(name=spec.name, source=source, idempotency_key=idempotency_key)
    session.add(batch)
    session.flush()  # the batch id, for the requests
    if spec.notify is not None:
        session.add(
            WebhookTarget(
                batch_id=batch.id,
                url=spec.notify.url,
                secret=spec.notify.secret,
                request_events=spec.notify.request_events,
            )
        )
    requests = []
    for position, server in enumerate(spec.expand()):
        request = ServerRequest(
            batch_id=batch.id, position=position, name=server.name, spec=server.model_dump()
        )
        request.attachments = [
            VolumeAttachment(position=i, volume_id=v["volume_id"], device=v.get("device"))
            for i, v in enumerate(server.attach_volumes)
        ]
        session.add(request)
        requests.append(request)
    session.flush()  # request ids, for their first events
    for request in requests:
        record_creation(session, request, detail=f"submitted via {source.value}")
    return Submitted(batch.id, [r.id for r in requests], created=True)


def submit(
    sessions: sessionmaker[Session],
    spec: BatchSpec,
    source: BatchSource,
    idempotency_key: str | None = None,
) -> Submitted:
    """Store the batch in one transaction, then start it: ``bms.start_batch`` runs its
    preflight and dispatches its requests."""
    try:
        with session_scope(sessions) as session:
            submitted = store_batch(session, spec, source, idempotency_key)
    except IntegrityError:
        # Two submissions with one key raced: the other one won, return its batch.
        with session_scope(sessions) as session:
            submitted = _existing(session, idempotency_key)
        if submitted is None:
            raise
    if submitted.created:
        send_start(submitted.batch_id)
    return submitted


@shared_task(name="bms.submit_batch", ignore_result=False, acks_late=True)
def submit_batch(
    batch: dict[str, Any],
    idempotency_key: str | None = None,
    notify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Intake for systems that reach only the broker: the JSON of ``POST /v1/batches``.

    ``notify`` (``{url, secret?, request_events?}``) is the batch's ``notify``, given apart; a
    sender that passes a secret should also pass ``kwargsrepr`` so that Flower does not show it.
    Returns ``{"batch_id", "request_ids", "created"}``, or ``{"errors": [[field, message]]}``
    when the batch does not validate (nothing is stored then).
    """
    if notify is not None and isinstance(batch, dict):
        batch = {**batch, "notify": notify}
    try:
        spec = parse_batch(batch)
    except SpecError as exc:
        return {"errors": [list(error) for error in exc.errors]}
    submitted = submit(runtime().sessions, spec, BatchSource.TASK, idempotency_key)
    return {
        "batch_id": str(submitted.batch_id),
        "request_ids": [str(r) for r in submitted.request_ids],
        "created": submitted.created,
    }
