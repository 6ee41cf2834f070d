"""The global rate limiter: one moving window per API class in Redis, shared by every worker.

Celery's own ``rate_limit`` is per worker process; N workers would send N times the quota.
Here every process on every machine hits the same Redis keys, so the account's quota holds
whatever the number of workers. A denied call is not made: the caller learns how long to wait
and re-schedules itself (it never sleeps in a worker slot).
"""

from __future__ import annotations

import time

import redis
from limits import RateLimitItem
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

#: Namespace of the limiter's keys, so that two deployments can share one Redis.
KEY_PREFIX = "bms"
#: Back-off after a 429 that carried no Retry-After.
DEFAULT_BACKOFF_SECONDS = 5.0


class NoCapacity(Exception):
    """The API class has no capacity now; retry after ``wait_seconds``."""

    def __init__(self, api_class: str, wait_seconds: float) -> None:
        super().__init__(f"no {api_class} capacity for {wait_seconds:.2f}s")
        self.api_class = api_class
        self.wait_seconds = wait_seconds


class GlobalLimiter:
    """Acquire one call of an API class against its account-wide quota."""

    def __init__(self, redis_url: str, limits: dict[str, RateLimitItem]) -> None:
        self._limits = limits
        self._storage = RedisStorage(redis_url, key_prefix=KEY_PREFIX)
        self._window = MovingWindowRateLimiter(self._storage)
        self._redis = redis.Redis.from_url(redis_url)

    def acquire(self, api_class: str) -> None:
        """Spend one call of ``api_class``.

        :raises NoCapacity: the quota (or a back-off after a 429) forbids a call now.
        """
        backoff_ms = self._redis.pttl(self._backoff_key(api_class))
        if backoff_ms > 0:
            raise NoCapacity(api_class, backoff_ms / 1000)
        item = self._limits[api_class]
        if self._window.hit(item, api_class):
            return
        reset_at, _remaining = self._window.get_window_stats(item, api_class)
        # reset_at is when the oldest call in the window leaves it: a slot frees then.
        raise NoCapacity(api_class, max(reset_at - time.time(), 0.01))

    def back_off(self, api_class: str, seconds: float | None) -> None:
        """The cloud answered 429: stop every worker calling ``api_class`` for a while."""
        wait = seconds if seconds and seconds > 0 else DEFAULT_BACKOFF_SECONDS
        # NX: the first 429 sets the pause; a burst of them does not keep extending it.
        self._redis.set(self._backoff_key(api_class), b"1", px=int(wait * 1000), nx=True)

    def clear(self) -> None:
        """Forget every window and back-off (tests and benchmarks)."""
        self._storage.reset()
        for key in self._redis.scan_iter(f"{KEY_PREFIX}:backoff:*"):
            self._redis.delete(key)

    @staticmethod
    def _backoff_key(api_class: str) -> str:
        return f"{KEY_PREFIX}:backoff:{api_class}"
