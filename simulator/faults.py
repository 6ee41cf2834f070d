"""Fault decisions: which call fails with 500/503, is dropped or delayed, and which job fails.

Every decision is drawn from generators seeded by ``FaultSettings.seed``, one per kind of
decision, so the same seed and the same sequence of calls repeat the same faults.
"""

from __future__ import annotations

import random
import threading

from simulator.config import FaultSettings

HTTP_500, HTTP_503, DROP = "500", "503", "drop"

#: Why a create sub_job failed, per code (reference section 12).
FAIL_REASONS = {
    "BMS.3037": "Insufficient resources for the requested flavor in this availability zone.",
    "BMS.3004": "Internal error while provisioning the bare metal server.",
    "BMS.3033": "Failed to create the system disk.",
    "BMS.3005": "Failed to create the server's port.",
}


class FaultInjector:
    """Thread-safe fault decisions; ``settings`` may be replaced at run time."""

    def __init__(self, settings: FaultSettings, fail_create_codes: list[str]) -> None:
        self._lock = threading.Lock()
        self.fail_create_codes = list(fail_create_codes) or ["BMS.3037"]
        self.configure(settings)

    def configure(self, settings: FaultSettings) -> None:
        """Install new settings and reseed every generator from their seed."""
        with self._lock:
            self.settings = settings
            self._http = random.Random(f"{settings.seed}:http")
            self._jobs = random.Random(f"{settings.seed}:jobs")
            self._durations = random.Random(f"{settings.seed}:durations")
            self._create_turn = 0

    def http_fault(self) -> str | None:
        """Whether this call is answered 500, 503, dropped, or served (None)."""
        with self._lock:
            draw = self._http.random()
            settings = self.settings
        if draw < settings.http_500_share:
            return HTTP_500
        draw -= settings.http_500_share
        if draw < settings.http_503_share:
            return HTTP_503
        draw -= settings.http_503_share
        if draw < settings.drop_share:
            return DROP
        return None

    def latency_seconds(self) -> float:
        return self.settings.latency_ms / 1000.0

    def create_failure(self) -> tuple[str, str] | None:
        """The (code, reason) a create sub_job fails with, or None when it succeeds."""
        with self._lock:
            if self._jobs.random() >= self.settings.create_fail_share:
                return None
        return self.pick_create_code()

    def count_failures(self, count: int) -> set[int]:
        """Which sub_jobs (0-based) of a create of ``count`` servers fail by
        ``count_fail_share``: none for a single server, else that share of them, rounded, at
        least one."""
        with self._lock:
            share = self.settings.count_fail_share
            if count < 2 or share <= 0:
                return set()
            failed = min(count, max(1, round(share * count)))
            return set(self._jobs.sample(range(count), failed))

    def pick_create_code(self) -> tuple[str, str]:
        """The next (code, reason) of a failed create sub_job, in turn."""
        with self._lock:
            code = self.fail_create_codes[self._create_turn % len(self.fail_create_codes)]
            self._create_turn += 1
        return code, FAIL_REASONS.get(code, "The bare metal server could not be created.")

    def attach_failure(self) -> tuple[str, str] | None:
        with self._lock:
            failed = self._jobs.random() < self.settings.attach_fail_share
        if failed:
            return "BMS.1004", "Failed to attach the volume to the bare metal server."
        return None

    def duration(self, low: float, high: float) -> float:
        with self._lock:
            return self._durations.uniform(low, high)
