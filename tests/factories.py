"""Small builders of valid rows and specs for tests."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.orm import Session

from models.records import Batch, BatchSource, ServerRequest, record_creation
from models.states import RequestState

#: A server that passes every rule and names the simulator's default catalog.
VALID_SERVER: dict[str, Any] = {
    "imageRef": "a3e5c3e0-0000-4000-8000-000000000001",
    "flavorRef": "physical.o2.medium",
    "name": "bms-web",
    "vpcid": "c1d0e0f0-0000-4000-8000-0000000000a1",
    "nics": [{"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1"}],
    "availability_zone": "cn-north-4a",
    "key_name": "demo-key",
    "metadata": {"op_svc_userid": "8d5b8e3a2b1c4f0e9d7a6b5c4d3e2f10"},
    "extendparam": {"chargingMode": "postPaid"},
}


def server(**changes: Any) -> dict[str, Any]:
    """A copy of ``VALID_SERVER`` with ``changes`` applied (``None`` removes a field)."""
    body = copy.deepcopy(VALID_SERVER)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def batch(*servers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "test-batch", "servers": list(servers) or [server()], **fields}


def add_request(
    session: Session, state: RequestState = RequestState.PENDING, name: str = "bms-web"
) -> ServerRequest:
    """A committed batch with one request in ``state`` (set directly, as a fixture)."""
    new_batch = Batch(name="test-batch", source=BatchSource.CLI)
    session.add(new_batch)
    session.flush()  # assigns the batch id the request refers to
    request = ServerRequest(
        batch_id=new_batch.id, position=0, name=name, spec={"name": name}, state=state
    )
    session.add(request)
    session.flush()  # assigns the request id the event refers to
    record_creation(session, request)
    session.commit()
    return request
