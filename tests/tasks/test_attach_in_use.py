"""The attach step with a stub cloud: which refusals are waited out and which fail at once."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import selectinload

from bms.exceptions import BadRequest
from models.records import AttachmentState, ServerRequest, VolumeAttachment
from models.states import RequestState, Step
from tasks.attach import attach_volume
from tasks.base import Wait
from tests.factories import add_request
from tests.tasks.stubs import body, read

S = RequestState
IN_USE = BadRequest(400, "BMS.0103", "The volume v-0 is in-use.")


def attaching(sessions, attempt: int = 0) -> ServerRequest:
    with sessions() as session:
        request = add_request(session, S.ATTACHING)
        request.server_id = "srv-1"
        session.add(VolumeAttachment(request_id=request.id, position=0, volume_id="v-0",
                                     attempt=attempt))  # fmt: skip
        session.commit()
        return request


def test_a_volume_in_use_by_another_server_fails_the_request_at_once(database, stub_cloud):
    request = attaching(database.sessions)
    stub_cloud.answers = {"attach_volume": IN_USE, "list_volume_attachments": lambda _server: []}

    body(attach_volume)(request_id=str(request.id), fence=0)

    stored = read(database.sessions, ServerRequest, request.id,
                  selectinload(ServerRequest.attachments))  # fmt: skip
    assert (stored.state, stored.failed_step, stored.last_error_code) == (
        S.FAILED,
        Step.ATTACH,
        "BMS.0103",
    )
    assert stored.attachments[0].state is AttachmentState.FAILED
    assert len(stub_cloud.called("attach_volume")) == 1


def test_after_a_lost_answer_an_in_use_refusal_is_looked_at_again(database, stub_cloud):
    # attempt 1 was sent and its answer lost: the volume may be attaching to our server.
    request = attaching(database.sessions, attempt=1)
    stub_cloud.answers = {"attach_volume": IN_USE, "list_volume_attachments": lambda _server: []}

    with pytest.raises(Wait):
        body(attach_volume)(request_id=str(request.id), fence=0)

    assert read(database.sessions, ServerRequest, request.id).state is S.ATTACHING
