"""Asynchronous jobs and the schedule that drives them.

A job's steps are events on a time-ordered queue; ``Schedule.run_due`` applies every event whose
time has come. The state calls it before answering any request, so a job's status follows the
clock lazily, with no background thread, and a fake clock moves it deterministically.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.clock import SystemClock, job_time

INIT, RUNNING, SUCCESS, FAIL = "INIT", "RUNNING", "SUCCESS", "FAIL"


def new_job_id() -> str:
    return secrets.token_hex(16)


@dataclass
class Job:
    """A job or sub_job as ``GET /v1/{project_id}/jobs/{job_id}`` shows it."""

    job_type: str
    begin_time: str
    job_id: str = field(default_factory=new_job_id)
    status: str = INIT
    end_time: str | None = None
    error_code: str | None = None
    fail_reason: str | None = None
    entities: dict = field(default_factory=dict)
    sub_jobs: list[Job] = field(default_factory=list)
    #: Whether this is a top-level job (its entities list the sub_jobs).
    top: bool = True

    def finish(self, moment: str, error_code: str | None, reason: str | None) -> None:
        self.status = FAIL if error_code else SUCCESS
        self.end_time = moment
        self.error_code = error_code
        self.fail_reason = reason
        if error_code and not self.top:
            self.entities["errorcode_message"] = reason

    def finish_if_done(self, moment: str) -> None:
        """Close a top job once every sub_job has ended; it fails if any sub_job failed."""
        if self.status in (SUCCESS, FAIL):
            return
        if any(sub.status not in (SUCCESS, FAIL) for sub in self.sub_jobs):
            return
        failed = next((sub for sub in self.sub_jobs if sub.status == FAIL), None)
        if failed:
            self.finish(moment, failed.error_code, failed.fail_reason)
        else:
            self.finish(moment, None, None)

    def to_api(self) -> dict:
        entities = dict(self.entities)
        if self.top:
            entities["sub_jobs_total"] = len(self.sub_jobs)
            entities["sub_jobs"] = [sub.to_api() for sub in self.sub_jobs]
        body = {
            "status": self.status,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "begin_time": self.begin_time,
            "end_time": self.end_time,
            "error_code": self.error_code,
            "fail_reason": self.fail_reason,
            "entities": entities,
        }
        if self.status == FAIL:
            body["code"] = self.error_code
            body["message"] = self.fail_reason
        return body


@dataclass
class Step:
    """One sub_job: ``begin(sub)`` runs when it starts, ``end(sub, error_code)`` when it ends.

    ``end`` returns the error code and reason the sub_job finally carries (it may turn a success
    into a failure, e.g. when a subnet has no free address left).
    """

    begin: Callable[[Job], str | None]
    end: Callable[[Job, str | None], tuple[str | None, str | None]]
    error_code: str | None = None
    fail_reason: str | None = None


class Schedule:
    """Events ordered by due time (then by insertion), applied when the clock reaches them."""

    def __init__(self, clock: SystemClock) -> None:
        self.clock = clock
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._order = itertools.count()
        #: The due time of the event being applied (None outside events), so changes are
        #: stamped when they happened rather than when a request noticed them.
        self.current: float | None = None

    def at(self, due: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._events, (due, next(self._order), action))

    def run_due(self) -> None:
        now = self.clock.monotonic()
        while self._events and self._events[0][0] <= now:
            due, _, action = heapq.heappop(self._events)
            self.current = due
            try:
                action(due)
            finally:
                self.current = None

    def stamp(self, due: float) -> str:
        return job_time(self.clock.wall(due))

    def start_job(
        self,
        job_type: str,
        sub_type: str,
        steps: list[Step],
        durations: list[float],
        begin_share: float = 0.1,
    ) -> Job:
        """Schedule a job of one sub_job per step; each starts after ``begin_share`` of its
        duration (0 starts it at once, for APIs that show the new resource in their answer)."""
        start = self.clock.monotonic()
        job = Job(job_type, self.stamp(start))
        for step, duration in zip(steps, durations, strict=True):
            sub = Job(sub_type, self.stamp(start), top=False)
            job.sub_jobs.append(sub)
            self.at(start + duration * begin_share, self._beginner(job, sub, step))
            self.at(start + duration, self._ender(job, sub, step))
        if not steps:
            self.at(start, lambda due: job.finish(self.stamp(due), None, None))
        return job

    def _beginner(self, job: Job, sub: Job, step: Step) -> Callable[[float], None]:
        def begin(due: float) -> None:
            job.status = RUNNING
            sub.status = RUNNING
            sub.begin_time = self.stamp(due)
            override = step.begin(sub)
            if override:
                step.error_code, step.fail_reason = override, "No free resource for the server."

        return begin

    def _ender(self, job: Job, sub: Job, step: Step) -> Callable[[float], None]:
        def end(due: float) -> None:
            code, reason = step.end(sub, step.error_code)
            sub.finish(self.stamp(due), code, reason or step.fail_reason)
            job.finish_if_done(self.stamp(due))

        return end
