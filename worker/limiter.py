"""The global rate limiter: one moving window per API class in Redis, shared by every worker.

Celery's own ``rate_limit`` is per worker process; N workers would send N times the quota.
Here every process on every machine goes through the same Redis key per API class, so the
account's quota holds whatever the number of workers. A denied call is not made: the caller
learns how long to wait and re-schedules itself (it never sleeps in a worker slot).

Why a script of our own rather than ``limits``' moving window (its items are still used for
the configuration): ``limits`` stamps a call when it is admitted, with each client's clock.
The cloud counts a call when it arrives. A call admitted the instant a slot frees can reach the
cloud before the call it replaces is a full window old there (that one may have been slow on its
way), and is answered 429. Here a call's entry is stamped again when its answer is back (it has
surely arrived by then), so a slot frees a full window after the cloud saw the call; stamps
come from Redis's clock, one clock for every machine, and a small margin absorbs rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from limits import RateLimitItem

from worker.metrics import MetricsRecorder

#: Namespace of the limiter's keys, so that two deployments can share one Redis.
KEY_PREFIX = "bms:limit"
#: Back-off after a 429 that carried no Retry-After.
DEFAULT_BACKOFF_SECONDS = 5.0
#: Share of each window added as a margin (and at least this many milliseconds).
DEFAULT_MARGIN = 0.01
MIN_MARGIN_MS = 10

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the window (a sorted set of call times), the back-off flag, a sequence.
# ARGV: limit, window in ms, margin in ms.
# Returns {0, entry} when admitted, {ms to wait} when not.
_ACQUIRE = (
    _NOW_MS
    + """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {pause} end
local span = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local entry = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], now, entry)
  redis.call('PEXPIRE', KEYS[1], span)
  return {0, entry}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {math.max(tonumber(oldest[2]) + span - now, 1)}
"""
)

# KEYS: the window. ARGV: the entry, window + margin in ms. Stamps the entry with now.
_COMPLETE = (
    _NOW_MS
    + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)


@dataclass(frozen=True)
class Usage:
    """An API class now: calls in its window, the quota, the window, the 429 pause left."""

    used: int
    limit: int
    window_seconds: float
    paused_seconds: float


class NoCapacity(Exception):
    """The API class has no capacity now; retry after ``wait_seconds``."""

    def __init__(self, api_class: str, wait_seconds: float) -> None:
        super().__init__(f"no {api_class} capacity for {wait_seconds:.3f}s")
        self.api_class = api_class
        self.wait_seconds = wait_seconds


class GlobalLimiter:
    """Acquire one call of an API class against its account-wide quota."""

    def __init__(
        self, redis_url: str, limits: dict[str, RateLimitItem], margin: float = DEFAULT_MARGIN
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._metrics = MetricsRecorder(self._redis)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._complete = self._redis.register_script(_COMPLETE)
        self._windows = {api_class: _window(item, margin) for api_class, item in limits.items()}

    def acquire(self, api_class: str) -> Callable[[], None]:
        """Spend one call of ``api_class``; call what it returns once the call's answer is in.

        :raises NoCapacity: the quota (or a back-off after a 429) forbids a call now.
        """
        limit, window_ms, margin_ms = self._windows[api_class]
        window_key = f"{KEY_PREFIX}:{api_class}"
        keys = [window_key, _backoff_key(api_class), f"{KEY_PREFIX}:seq"]
        answer = self._acquire(keys=keys, args=[limit, window_ms, margin_ms])
        if answer[0]:
            wait = int(answer[0]) / 1000
            self._metrics.limiter_wait(api_class, wait)
            raise NoCapacity(api_class, wait)
        entry, span = answer[1], window_ms + margin_ms

        def completed() -> None:
            self._complete(keys=[window_key], args=[entry, span])

        return completed

    def back_off(self, api_class: str, seconds: float | None) -> None:
        """The cloud answered 429: stop every worker calling ``api_class`` for a while."""
        wait = seconds if seconds and seconds > 0 else DEFAULT_BACKOFF_SECONDS
        # NX: the first 429 sets the pause; a burst of them does not keep extending it.
        self._redis.set(_backoff_key(api_class), b"1", px=int(wait * 1000), nx=True)

    def usage(self) -> dict[str, Usage]:
        """Each API class's calls in its current window, its quota, and any 429 pause left."""
        classes = list(self._windows)
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        for api_class in classes:
            pipe.zrange(f"{KEY_PREFIX}:{api_class}", 0, -1, withscores=True)
            pipe.pttl(_backoff_key(api_class))
        answers = pipe.execute()
        seconds, micros = answers[0]
        now_ms = seconds * 1000 + micros // 1000
        usage = {}
        for index, api_class in enumerate(classes):
            limit, window_ms, margin_ms = self._windows[api_class]
            entries, pause_ms = answers[1 + 2 * index], answers[2 + 2 * index]
            used = sum(1 for _entry, stamp in entries if stamp > now_ms - window_ms - margin_ms)
            usage[api_class] = Usage(used, limit, window_ms / 1000, max(pause_ms, 0) / 1000)
        return usage

    def clear(self) -> None:
        """Forget every window and back-off (tests and benchmarks)."""
        for key in self._redis.scan_iter(f"{KEY_PREFIX}:*"):
            self._redis.delete(key)


def _window(item: RateLimitItem, margin: float) -> tuple[int, int, int]:
    window_ms = int(item.get_expiry() * 1000)
    return item.amount, window_ms, max(int(window_ms * margin), MIN_MARGIN_MS)


def _backoff_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:backoff:{api_class}"
