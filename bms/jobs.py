"""Typed results of ``GET /v1/{project_id}/jobs/{job_id}`` (reference section 10).

A :class:`Job` holds the top-level status and one :class:`SubJob` per server; its
:attr:`~Job.outcome` says whether the orchestrator is done, must look at failures, or should
poll again. Parsing is lenient about the fields the reference marks unverified (null versus
empty strings, ``code``/``message`` beside ``error_code``/``fail_reason``) and strict about the
one field every poller needs, ``status``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

#: Statuses after which a job or sub_job never changes again.
SUCCESS = "SUCCESS"
FAIL = "FAIL"


class JobOutcome(enum.Enum):
    """What a job's state means for whoever waits on it."""

    RUNNING = "running"  # INIT, RUNNING, PENDING_PAYMENT or anything not yet terminal
    DONE = "done"  # top level SUCCESS and every sub_job SUCCESS
    FAILED = "failed"  # top level FAIL, or a finished job with a failed sub_job


def _text(value: Any) -> str | None:
    """None for null or empty values, else the value as a string."""
    if value is None or value == "":
        return None
    return str(value)


@dataclass(frozen=True)
class SubJob:
    """One server's share of a batch job (``entities.sub_jobs[]``)."""

    status: str
    job_id: str | None
    job_type: str | None
    server_id: str | None
    error_code: str | None
    fail_reason: str | None

    @classmethod
    def from_api(cls, body: dict) -> SubJob:
        """Build from one element of ``entities.sub_jobs``."""
        entities = body.get("entities") or {}
        return cls(
            status=str(body.get("status") or ""),
            job_id=_text(body.get("job_id")),
            job_type=_text(body.get("job_type")),
            server_id=_text(entities.get("server_id")),
            error_code=_text(body.get("error_code")) or _text(body.get("code")),
            fail_reason=(
                _text(body.get("fail_reason"))
                or _text(body.get("message"))
                or _text(entities.get("errorcode_message"))
            ),
        )

    @property
    def failed(self) -> bool:
        """True when this sub_job ended in FAIL."""
        return self.status == FAIL


@dataclass(frozen=True)
class Job:
    """An asynchronous BMS job: top-level status, error and sub_jobs."""

    status: str
    job_id: str | None
    job_type: str | None
    error_code: str | None
    fail_reason: str | None
    begin_time: str | None = None
    end_time: str | None = None
    server_id: str | None = None  # entities.server_id, for jobs about one server
    sub_jobs: list[SubJob] = field(default_factory=list)

    @classmethod
    def from_api(cls, body: dict) -> Job:
        """Build from the decoded body of ``GET /v1/{project_id}/jobs/{job_id}``.

        :raises ValueError: the body is not a job (not an object, or no ``status``).
        """
        if not isinstance(body, dict) or not body.get("status"):
            raise ValueError("job body has no status")
        entities = body.get("entities") or {}
        return cls(
            status=str(body["status"]),
            job_id=_text(body.get("job_id")),
            job_type=_text(body.get("job_type")),
            error_code=_text(body.get("error_code")) or _text(body.get("code")),
            fail_reason=_text(body.get("fail_reason")) or _text(body.get("message")),
            begin_time=_text(body.get("begin_time")),
            end_time=_text(body.get("end_time")),
            server_id=_text(entities.get("server_id")),
            sub_jobs=[SubJob.from_api(sub) for sub in entities.get("sub_jobs") or []],
        )

    @property
    def outcome(self) -> JobOutcome:
        """DONE only when the top level and every sub_job succeeded; FAILED when the top level
        failed or a finished job has a failed sub_job; RUNNING otherwise.

        A top-level SUCCESS with a sub_job still running counts as RUNNING: the reference leaves
        that combination unverified, and polling again is the safe reading.
        """
        if self.status == FAIL:
            return JobOutcome.FAILED
        if self.status != SUCCESS:
            return JobOutcome.RUNNING
        if any(sub.failed for sub in self.sub_jobs):
            return JobOutcome.FAILED
        if all(sub.status == SUCCESS for sub in self.sub_jobs):
            return JobOutcome.DONE
        return JobOutcome.RUNNING

    @property
    def failures(self) -> list[SubJob]:
        """The failed sub_jobs; for a failed job without any, one entry made from the top level."""
        failed = [sub for sub in self.sub_jobs if sub.failed]
        if failed or self.status != FAIL:
            return failed
        return [
            SubJob(
                status=FAIL,
                job_id=self.job_id,
                job_type=self.job_type,
                server_id=self.server_id,
                error_code=self.error_code,
                fail_reason=self.fail_reason,
            )
        ]

    @property
    def server_ids(self) -> list[str]:
        """Server ids named by the sub_jobs (in order), else the job's ``entities.server_id``."""
        ids = [sub.server_id for sub in self.sub_jobs if sub.server_id]
        if not ids and self.server_id:
            ids = [self.server_id]
        return ids
