"""Intake: store a validated batch as requests, then start it (preflight, then their chains).

Shared by the REST API, the command line and the ``bms.submit_batch`` task, so that a batch is
stored the same way whichever door it came through: all of it or nothing, and once per
idempotency key. Storing is one transaction of a fixed number of statements whatever the
batch's size (one bulk insert per table). The rest is the workers': ``bms.start_batch`` runs
the preflight, then ``bms.dispatch_batch`` sends the chains in chunks (``tasks.batch_dispatch``),
so that the answer waits for neither.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import bulk
from models.base import utcnow
from models.canonical import batch_digest
from models.db import session_scope
from models.records import (
    AttachmentState,
    Batch,
    BatchSource,
    Event,
    ServerRequest,
    VolumeAttachment,
)
from models.spec import BatchSpec, SpecError, check_idempotency_key, parse_batch
from models.states import RequestState
from models.webhooks import WebhookTarget
from tasks.preflight import send_start
from worker import fault_hooks
from worker.runtime import runtime


@dataclass
class Submitted:
    batch_id: uuid.UUID
    request_ids: list[uuid.UUID]
    created: bool  # False: an earlier submission with the same idempotency key
    #: The requests' names, in the order of ``request_ids``.
    names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """How many requests the batch has."""
        return len(self.request_ids)


class IdempotencyConflict(Exception):
    """The idempotency key names a batch whose body differs from this one."""

    def __init__(self, key: str, batch_id: uuid.UUID, stored: str, submitted: str) -> None:
        self.key, self.batch_id = key, batch_id
        self.stored_digest, self.submitted_digest = stored, submitted
        super().__init__(
            f"Idempotency-Key {key!r} was used for batch {batch_id} with another body "
            f"(stored sha256 {stored}, this one {submitted})"
        )


def _existing(
    session: Session, idempotency_key: str | None, digest: str | None = None
) -> Submitted | None:
    """The batch stored under ``idempotency_key``, if any.

    :raises IdempotencyConflict: its body's digest is not ``digest``.
    """
    if not idempotency_key:
        return None
    found = session.execute(
        select(Batch.id, Batch.body_digest).where(Batch.idempotency_key == idempotency_key)
    ).first()
    if found is None:
        return None
    batch_id, stored_digest = found
    if digest and stored_digest and stored_digest != digest:
        raise IdempotencyConflict(idempotency_key, batch_id, stored_digest, digest)
    rows = session.execute(
        select(ServerRequest.id, ServerRequest.name)
        .where(ServerRequest.batch_id == batch_id)
        .order_by(ServerRequest.position)
    ).all()
    return Submitted(batch_id, [r.id for r in rows], created=False, names=[r.name for r in rows])


def store_batch(
    session: Session,
    spec: BatchSpec,
    source: BatchSource,
    idempotency_key: str | None = None,
) -> Submitted:
    """Add the batch, one request per server and their first events to ``session``'s
    transaction (the caller commits): one statement per table, ids made here.

    :raises IdempotencyConflict: the key was used for a batch with another body.
    """
    digest = batch_digest(spec)
    existing = _existing(session, idempotency_key, digest)
    if existing is not None:
        return existing
    now = utcnow()
    batch_id = uuid.uuid4()
    requests, attachments, names = _request_rows(spec, batch_id, now)
    session.execute(
        insert(Batch.__table__),
        [
            {
                "id": batch_id,
                "name": spec.name,
                "source": source,
                "idempotency_key": idempotency_key,
                "body_digest": digest,
                "request_count": len(requests),
                "dispatched_position": 0,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    if spec.notify is not None:
        session.add(
            WebhookTarget(
                batch_id=batch_id,
                url=spec.notify.url,
                secret=spec.notify.secret,
                request_events=spec.notify.request_events,
            )
        )
    bulk.insert_rows(session, ServerRequest.__table__, _REQUEST_COLUMNS, requests)
    bulk.insert_rows(session, VolumeAttachment.__table__, _ATTACHMENT_COLUMNS, attachments)
    detail = f"submitted via {source.value}"
    # Each request's first event (None -> PENDING), in submission order.
    events = [(row[0], None, _PENDING, now, detail) for row in requests]
    bulk.insert_rows(session, Event.__table__, _EVENT_COLUMNS, events)
    request_ids = [row[0] for row in requests]
    return Submitted(batch_id, request_ids, created=True, names=names)


_PENDING = RequestState.PENDING.value
_REQUEST_COLUMNS = (
    "id", "batch_id", "position", "name", "spec", "state", "attempt", "fence", "restarts",
    "create_serial", "teardown_attempts", "cleanup_attempts", "created_at", "updated_at",
)  # fmt: skip
_ATTACHMENT_COLUMNS = (
    "request_id", "position", "volume_id", "device", "state", "attempt", "created_at",
    "updated_at",
)  # fmt: skip
_EVENT_COLUMNS = ("request_id", "from_state", "to_state", "at", "detail")


def _request_rows(spec: BatchSpec, batch_id: uuid.UUID, now) -> tuple[list, list, list[str]]:
    """The rows of the batch's requests and attachments (tuples in the order of the columns
    above) and the requests' names, in submission order.

    A request's spec is what ``ExpandedServer.model_dump()`` always gave, as JSON text. The
    servers of one ``count`` differ only by their name, so their spec is serialized once, with
    a placeholder where the name goes, and each one's is that text with its name put in
    (serializing 10,000 specs one by one was a sixth of a 10,000-server intake).
    """
    requests: list[tuple] = []
    attachments: list[tuple] = []
    names: list[str] = []
    for server in spec.servers:
        volumes = server.volumes_to_attach()
        member_names = server.member_names()
        texts = _spec_texts(server.create_body(), volumes, list(server.tags), member_names)
        for name, spec_text in zip(member_names, texts, strict=True):
            request_id = uuid.uuid4()
            position = len(requests)
            requests.append(
                (request_id, batch_id, position, name, spec_text, _PENDING, 0, 0, 0, 0, 0, 0,
                 now, now)
            )  # fmt: skip
            attachments.extend(
                (request_id, index, volume["volume_id"], volume.get("device"),
                 AttachmentState.PENDING.value, 0, now, now)
                for index, volume in enumerate(volumes)
            )  # fmt: skip
            names.append(name)
    return requests, attachments, names


def _spec_texts(
    body: dict[str, Any], volumes: list[dict], tags: list[str], names: list[str]
) -> list[str]:
    """The JSON of ``{name, create_body, attach_volumes, tags}`` for each of ``names``."""

    def spec_of(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "create_body": {**body, "name": name},
            "attach_volumes": volumes,
            "tags": tags,
        }

    if len(names) == 1:
        return [json.dumps(spec_of(names[0]))]
    # A placeholder no validated value holds (a random one: it cannot be guessed to collide).
    placeholder = json.dumps(f"name-{uuid.uuid4().hex}")
    template = json.dumps(spec_of(json.loads(placeholder)))
    parts = template.split(placeholder)
    if len(parts) != 3:  # the name in both places, and nowhere else
        return [json.dumps(spec_of(name)) for name in names]
    return [json.dumps(name).join(parts) for name in names]


def submit(
    sessions: sessionmaker[Session],
    spec: BatchSpec,
    source: BatchSource,
    idempotency_key: str | None = None,
) -> Submitted:
    """Store the batch in one transaction, then send ``bms.start_batch``: it runs the batch's
    preflight and hands the dispatch of its requests on to ``bms.dispatch_batch``.

    :raises IdempotencyConflict: the key was used for a batch with another body.
    """
    try:
        with session_scope(sessions) as session:
            submitted = store_batch(session, spec, source, idempotency_key)
    except IntegrityError:
        # Two submissions with one key raced: the other one won, return its batch.
        with session_scope(sessions) as session:
            submitted = _existing(session, idempotency_key, batch_digest(spec))
        if submitted is None:
            raise
    if submitted.created:
        # With the broker unreachable the batch stays stored: the batch reconciler starts it.
        send_start(submitted.batch_id)
    return submitted


@shared_task(
    name="bms.submit_batch",
    ignore_result=False,
    acks_late=True,
    bind=True,
    # Checks in the worker's main process, before the pool: see tasks/poison.py.
    Strategy="tasks.poison:guarded_strategy",
    Request="tasks.poison:RecordingRequest",
)
def submit_batch(
    self,
    batch: dict[str, Any],
    idempotency_key: str | None = None,
    notify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Intake for systems that reach only the broker: the JSON of ``POST /v1/batches``.

    ``notify`` (``{url, secret?, request_events?}``) is the batch's ``notify``, given apart; a
    sender that passes a secret should also pass ``kwargsrepr`` so that Flower does not show it.
    Returns ``{"batch_id", "request_ids", "total", "created"}`` once the batch is stored (its
    chains are sent afterwards, by ``bms.dispatch_batch``), or ``{"errors": [[field,
    message]]}`` when the batch does not validate (nothing is stored then), or when its
    idempotency key was used for another body. Without an idempotency key the message's task id
    is the key: a redelivery of a message already stored stores nothing.
    """
    fault_hooks.before_submit(batch)
    if notify is not None and isinstance(batch, dict):
        batch = {**batch, "notify": notify}
    try:
        idempotency_key = check_idempotency_key(idempotency_key) or self.request.id
        spec = parse_batch(batch, runtime().settings.max_batch_servers)
        submitted = submit(runtime().sessions, spec, BatchSource.TASK, idempotency_key)
    except SpecError as exc:
        return {"errors": [list(error) for error in exc.errors]}
    except IdempotencyConflict as exc:
        return {"errors": [["idempotency_key", str(exc)]]}
    fault_hooks.after_submit()
    return {
        "batch_id": str(submitted.batch_id),
        "request_ids": [str(r) for r in submitted.request_ids],
        "total": submitted.total,
        "created": submitted.created,
    }
