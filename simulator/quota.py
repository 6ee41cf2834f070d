"""Per-API-class quotas: a sliding window of recent call times per class.

The window of ``create=50/minute`` is the last 60 seconds, the strictest reading of "per
minute": a call is allowed when fewer than 50 allowed calls fall inside it. A refused call is not
recorded, so a client that keeps retrying does not push its own window forward.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from limits import parse

from simulator.config import DEFAULT_QUOTAS

API_CLASSES = ("create", "show", "update", "attach", "detach", "job", "list", "nova")


@dataclass(frozen=True)
class Quota:
    amount: int
    window_seconds: float
    text: str


def parse_quotas(spec: str, base: str = DEFAULT_QUOTAS) -> dict[str, Quota]:
    """Parse ``create=50/minute;show=1000/minute``; classes left out keep ``base``'s quota."""
    quotas = {} if spec == base else parse_quotas(base, base)
    for part in filter(None, (piece.strip() for piece in spec.split(";"))):
        api_class, sep, amount = (text.strip() for text in part.partition("="))
        if not sep or api_class not in API_CLASSES:
            raise ValueError(
                f"{part!r}: expected CLASS=N/PERIOD with CLASS one of {', '.join(API_CLASSES)}"
            )
        try:
            item = parse(amount)
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
        quotas[api_class] = Quota(item.amount, float(item.get_expiry()), amount)
    return quotas


class QuotaBook:
    """Thread-safe sliding windows, one per API class."""

    def __init__(self, spec: str, clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.configure(spec)

    def configure(self, spec: str) -> None:
        """Install new quotas (validated first) and start every window afresh."""
        quotas = parse_quotas(spec)
        with self._lock:
            self.quotas = quotas
            self._calls = {api_class: deque() for api_class in quotas}

    def admit(self, api_class: str) -> Quota | None:
        """Record a call if its class has room; return the exceeded quota otherwise."""
        now = self._clock.monotonic()
        with self._lock:
            quota = self.quotas.get(api_class)
            if quota is None:
                return None
            calls = self._calls[api_class]
            while calls and calls[0] <= now - quota.window_seconds:
                calls.popleft()
            if len(calls) >= quota.amount:
                return quota
            calls.append(now)
        return None

    def to_api(self) -> dict:
        with self._lock:
            return {name: quota.text for name, quota in self.quotas.items()}


def throttle_message(quota: Quota) -> str:
    """The gateway's wording, e.g. ``…,limit:50,time:1 minute``."""
    seconds = quota.window_seconds
    units = {86400: "day", 3600: "hour", 60: "minute", 1: "second"}
    for size, unit in units.items():
        if seconds % size == 0:
            count = int(seconds // size)
            period = f"{count} {unit}" + ("s" if count > 1 else "")
            break
    return (
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{quota.amount},time:{period}"
    )
