"""Time for the simulator: a monotonic reading for durations and UTC wall time for timestamps.

Every lifecycle step is scheduled on this clock, so tests swap in ``FakeClock`` and move time
forward instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall(self, at: float) -> datetime:
        """The wall time of the monotonic reading ``at``."""
        return self.now() - timedelta(seconds=self.monotonic() - at)


class FakeClock(SystemClock):
    """A clock that only moves when told to; it starts at the real wall time, so AK/SK dates
    signed by a real client stay inside the allowed skew."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime.now(UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._elapsed += seconds


def job_time(moment: datetime) -> str:
    """Job timestamps: ISO-8601 UTC with milliseconds, ``2019-04-25T20:04:47.591Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def server_time(moment: datetime) -> str:
    """Server timestamps: ISO-8601 UTC to the second, ``2018-09-18T02:43:26Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
