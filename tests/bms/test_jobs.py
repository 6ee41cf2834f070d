"""Job parsing (reference section 10): outcome, failures and server ids for each job shape."""

from __future__ import annotations

import copy

import pytest

from bms.jobs import Job, JobOutcome, SubJob

# The reference's success example (OTC), verbatim.
SUCCESS_EXAMPLE = {
    "status": "SUCCESS",
    "job_id": "2c9eb2c5544cbf6101544f0602af2b4f",
    "job_type": "baremetalBatchCreate",
    "begin_time": "2019-04-25T20:04:34.604Z",
    "end_time": "2019-04-25T20:08:41.593Z",
    "error_code": None,
    "fail_reason": None,
    "entities": {
        "sub_jobs_total": 1,
        "sub_jobs": [
            {
                "status": "SUCCESS",
                "job_id": "2c9eb2c5544cbf6101544f0635672b60",
                "job_type": "baremetalSingleCreate",
                "begin_time": "2019-04-25T20:04:47.591Z",
                "end_time": "2019-04-25T20:08:21.328Z",
                "error_code": None,
                "fail_reason": None,
                "entities": {"server_id": "bae51750-0089-41a1-9b18-5c777978ff6d"},
            }
        ],
    },
}


def _sub(status, server_id=None, error_code=None, fail_reason=None, **extra):
    entities = {"server_id": server_id} if server_id else {}
    entities.update(extra.pop("entities", {}))
    return {
        "status": status,
        "job_id": f"sub-{server_id}",
        "job_type": "baremetalSingleCreate",
        "error_code": error_code,
        "fail_reason": fail_reason,
        "entities": entities,
        **extra,
    }


def _batch(status, *subs, **top):
    body = {
        "status": status,
        "job_id": "job-1",
        "job_type": "baremetalBatchCreate",
        "begin_time": "2026-11-27T05:00:00.000Z",
        "end_time": "",
        "error_code": None,
        "fail_reason": None,
        "entities": {"sub_jobs_total": len(subs), "sub_jobs": list(subs)},
    }
    body.update(top)
    return body


def test_success_example_is_done_with_its_server():
    job = Job.from_api(SUCCESS_EXAMPLE)
    assert job.outcome is JobOutcome.DONE
    assert job.status == "SUCCESS"
    assert job.job_id == "2c9eb2c5544cbf6101544f0602af2b4f"
    assert job.job_type == "baremetalBatchCreate"
    assert job.error_code is None and job.fail_reason is None
    assert job.server_ids == ["bae51750-0089-41a1-9b18-5c777978ff6d"]
    assert job.failures == []
    assert job.sub_jobs == [
        SubJob(
            status="SUCCESS",
            job_id="2c9eb2c5544cbf6101544f0635672b60",
            job_type="baremetalSingleCreate",
            server_id="bae51750-0089-41a1-9b18-5c777978ff6d",
            error_code=None,
            fail_reason=None,
        )
    ]


@pytest.mark.parametrize("status", ["INIT", "RUNNING", "PENDING_PAYMENT", "SOMETHING_NEW"])
def test_unfinished_jobs_are_running(status):
    job = Job.from_api(_batch(status, _sub("RUNNING", "s-1"), _sub("INIT")))
    assert job.outcome is JobOutcome.RUNNING
    assert job.failures == []
    assert job.server_ids == ["s-1"], "a sub_job names its server once the record exists"


def test_failed_batch_names_each_failing_server_and_code():
    body = _batch(
        "FAIL",
        _sub("SUCCESS", "s-1"),
        _sub("FAIL", "s-2", "BMS.3037", "insufficient resources"),
        _sub("FAIL", None, None, None, code="BMS.3033", message="system disk failed"),
        error_code="BMS.3037",
        fail_reason="some servers failed",
    )
    job = Job.from_api(body)
    assert job.outcome is JobOutcome.FAILED
    assert [(f.server_id, f.error_code, f.fail_reason) for f in job.failures] == [
        ("s-2", "BMS.3037", "insufficient resources"),
        (None, "BMS.3033", "system disk failed"),
    ]
    assert job.server_ids == ["s-1", "s-2"]


def test_partial_failure_reported_under_a_top_level_success_is_still_failed():
    job = Job.from_api(_batch("SUCCESS", _sub("SUCCESS", "s-1"), _sub("FAIL", "s-2", "BMS.3004")))
    assert job.outcome is JobOutcome.FAILED
    assert [f.server_id for f in job.failures] == ["s-2"]


def test_top_level_success_with_a_sub_job_still_running_is_running():
    job = Job.from_api(_batch("SUCCESS", _sub("SUCCESS", "s-1"), _sub("RUNNING", "s-2")))
    assert job.outcome is JobOutcome.RUNNING


def test_running_job_with_a_failed_sub_job_is_not_yet_terminal():
    job = Job.from_api(_batch("RUNNING", _sub("FAIL", "s-1", "BMS.3037"), _sub("RUNNING", "s-2")))
    assert job.outcome is JobOutcome.RUNNING
    assert [f.server_id for f in job.failures] == ["s-1"]


def test_failed_job_without_sub_jobs_gives_one_failure_from_the_top_level():
    body = {
        "status": "FAIL",
        "job_id": "job-attach",
        "job_type": "baremetalAttachVolume",
        "error_code": "BMS.1001",
        "fail_reason": "server state does not allow attach",
        "entities": {"server_id": "s-9"},
    }
    job = Job.from_api(body)
    assert job.outcome is JobOutcome.FAILED
    assert job.failures == [
        SubJob("FAIL", "job-attach", "baremetalAttachVolume", "s-9", "BMS.1001",
               "server state does not allow attach")
    ]  # fmt: skip
    assert job.server_ids == ["s-9"]


def test_job_without_sub_jobs_and_success_is_done():
    job = Job.from_api({"status": "SUCCESS", "job_id": "j", "entities": {"server_id": "s-1"}})
    assert job.outcome is JobOutcome.DONE
    assert job.server_ids == ["s-1"]


def test_error_message_from_entities_when_fail_reason_is_empty():
    sub = _sub("FAIL", "s-1", "BMS.3037", "", entities={"errorcode_message": "no capacity"})
    job = Job.from_api(_batch("FAIL", sub))
    assert job.failures[0].fail_reason == "no capacity"


@pytest.mark.parametrize("body", [{}, {"status": ""}, {"job_id": "j"}, [], None])
def test_a_body_without_status_is_refused(body):
    with pytest.raises(ValueError):
        Job.from_api(body)


def test_parsing_does_not_modify_the_body():
    body = copy.deepcopy(SUCCESS_EXAMPLE)
    Job.from_api(body)
    assert body == SUCCESS_EXAMPLE
