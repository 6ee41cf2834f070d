"""The chain read off a row: every state and progress marker names the right next task."""

from __future__ import annotations

import pytest

from models.records import AttachmentState, ServerRequest, VolumeAttachment
from models.states import RequestState, Step
from tasks.errors import TIMEOUT_CODE, is_retryable
from tasks.plan import next_task_name

S, A = RequestState, AttachmentState


def row(state, attachments=(), **fields) -> ServerRequest:
    request = ServerRequest(state=state, **fields)
    request.attachments = [
        VolumeAttachment(position=i, volume_id=f"v{i}", state=a_state, job_id=job)
        for i, (a_state, job) in enumerate(attachments)
    ]
    return request


@pytest.mark.parametrize(
    ("request_row", "expected"),
    [
        (row(S.PENDING), "bms.create_server"),
        (row(S.CREATING), "bms.create_server"),
        (row(S.BUILDING, job_id="j"), "bms.poll_create_job"),
        (row(S.BUILDING, server_id="s"), "bms.wait_server_built"),
        (row(S.BUILDING, server_id="s", cleanup_server_id="old"), "bms.delete_server"),
        (row(S.CREATING, cleanup_server_id="old"), "bms.delete_server"),
        (row(S.CREATING, cleanup_server_id="old", cleanup_job_id="d"), "bms.poll_delete_job"),
        (row(S.ATTACHING, [(A.ATTACHED, None), (A.PENDING, None)]), "bms.attach_volume"),
        (row(S.ATTACHING, [(A.ATTACHING, "j")]), "bms.poll_attach_job"),
        (row(S.TAGGING), "bms.apply_tags"),
        (row(S.TAGGING, step_done=Step.TAG), "bms.rename_server"),
        (row(S.TAGGING, step_done=Step.RENAME), "bms.finalize"),
        (row(S.ACTIVE), None),
        (row(S.FAILED), None),
        (row(S.FAILED, cleanup_server_id="s"), "bms.delete_server"),
        (row(S.CANCELLED), None),
        (row(S.CANCELLED, job_id="j"), "bms.poll_create_job"),
    ],
)
def test_next_task_follows_the_row(request_row, expected):
    assert next_task_name(request_row) == expected


@pytest.mark.parametrize(
    ("code", "from_job", "retryable"),
    [
        ("BMS.3037", True, True),  # insufficient resources: later may work
        ("BMS.3004", True, True),
        ("BMS.0212", False, True),  # overloaded, even when the call itself was refused
        ("BMS.0008", True, False),  # flavor
        ("BMS.0010", False, False),  # image
        ("BMS.0025", True, False),  # quota
        ("BMS.9999", True, True),  # unknown job failure: the cloud's, worth another attempt
        ("BMS.9999", False, False),  # unknown refusal: the request's
        (None, True, True),
    ],
)
def test_error_classification(code, from_job, retryable):
    assert is_retryable(code, from_job=from_job) is retryable


def test_our_timeout_code_is_not_a_cloud_code():
    assert TIMEOUT_CODE.startswith("ORCH.")


def test_a_step_message_shows_its_kwargs_made_without_celery_s_saferepr(monkeypatch):
    # Issue 11: Celery's saferepr of every message sent was 2% of a pool child's CPU.
    import uuid

    from celery.app import amqp

    from tasks.plan import step_signature
    from worker.app import app

    def no_saferepr(*_args, **_kwargs):
        raise AssertionError("saferepr called")

    monkeypatch.setattr(amqp, "saferepr", no_saferepr)
    request = row(S.BUILDING, job_id="job-1", spec={"tags": []}, name="web", create_serial=1)
    request.id, request.fence = uuid.uuid4(), 3
    signature = step_signature("bms.poll_create_job", request)
    options = {k: signature.options[k] for k in ("argsrepr", "kwargsrepr")}

    message = app.amqp.create_task_message(
        "task-1", signature.task, (), signature.kwargs, **options
    )

    assert message.headers["kwargsrepr"] == repr(signature.kwargs)
    assert f"'request_id': '{request.id}'" in message.headers["kwargsrepr"]
    assert message.headers["argsrepr"] == "()"
