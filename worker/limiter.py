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

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import redis
from limits import RateLimitItem

from worker.metrics import MetricsRecorder

#: Namespace of the limiter's keys, so that two deployments can share one Redis.
KEY_PREFIX = "bms:limit"
#: Back-off after a 429 that carried no Retry-After.
DEFAULT_BACKOFF_SECONDS = 5.0
#: Share of each window added as a margin (and at least this many milliseconds). The re-stamp
#: at the answer already puts a slot's start after the call's arrival by the cloud's answer time;
#: the margin only absorbs the stamps' millisecond rounding and clock rates. 1% (10 ms a 1 s
#: window) cost 1% of every quota's throughput (issue 11's create share).
DEFAULT_MARGIN = 0.002
MIN_MARGIN_MS = 2
#: How long a caller waits when the limiter's Redis cannot be reached (it is restarting, say).
UNREACHABLE_WAIT_SECONDS = 2.0
#: Redis failures that mean "not reachable now", as opposed to a bug in a script or a call.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
log = logging.getLogger("bms.limiter")
#: How late, after the instant it was sent for, a message that holds a booked slot starts (the
#: pickup: a worker's timer, a free pool child) is sampled over this many latest runs; a booked
#: create is sent that much ahead of its slot's instant (:meth:`GlobalLimiter.lead`).
PICKUP_SAMPLES = 64
#: The samples are forgotten this long after the last one.
PICKUP_TTL_MS = 3600 * 1000
#: The lead is the pickup this share of those runs stayed within...
PICKUP_QUANTILE = 0.9
#: ...and never more than this: a run that starts early waits for its instant in its pool
#: child, and that wait must stay short. A long lead feeds itself: children asleep for their
#: instants leave the next creates of the window waiting for a child, those start late, and
#: their samples keep the lead long (issue 11: after a 1.2 s stall of the machine the lead sat
#: at 0.5 s, 8 children slept 0.5 s per create, fewer than the quota's 20 a second started,
#: and each window came ~0.45 s late for three windows). A normal pickup is a few ms.
MAX_LEAD_SECONDS = 0.1
#: A held slot whose instant is further off than this is not waited for in a pool child: it is
#: given back, and the task comes back later (a message can start early only by the lead).
MAX_EARLY_SECONDS = 1.0
#: An entry in flight (unanswered, or booked and not used yet) keeps its slot this much longer
#: than a window (at least): a booked create that runs late still finds its slot.
GRACE_MIN_MS = 5000

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Entries leave the window a span after their stamp once answered (their stamp is final). An
# entry still in flight (its answer to come, or a booked call not made yet) stays a grace
# longer: its answer may still restamp it, and a booked call that runs late keeps its slot.
_TRIM = """
local function trim(window, answered, span, grace)
  local old = redis.call('ZRANGEBYSCORE', window, '-inf', now - span, 'WITHSCORES')
  for i = 1, #old, 2 do
    if redis.call('ZSCORE', answered, old[i]) or tonumber(old[i + 1]) <= now - span - grace then
      redis.call('ZREM', window, old[i])
    end
  end
  redis.call('ZREMRANGEBYSCORE', answered, '-inf', now - span)
end
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS: the window (a sorted set of call times), the back-off flag, a sequence, the window's
# answered entries. ARGV: limit, window in ms, margin in ms, grace in ms.
# Returns {0, entry} when admitted, {ms to wait} when not.
_ACQUIRE = (
    _NOW_MS
    + _TRIM
    + """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {pause} end
local span, grace = tonumber(ARGV[2]) + tonumber(ARGV[3]), tonumber(ARGV[4])
trim(KEYS[1], KEYS[4], span, grace)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local entry = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], now, entry)
  keep(KEYS[1], span + grace)
  return {0, entry}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + span - now
if wait <= 0 then wait = math.max(math.floor(tonumber(ARGV[2]) / tonumber(ARGV[1])), 1) end
return {wait}
"""
)

# KEYS: the window, the back-off flag, a sequence, the window's answered entries. ARGV: limit,
# window in ms, margin in ms, how many entries are wanted, how far ahead in ms a slot may be
# booked, the ms to come back after when calls in flight block a booking, grace in ms.
# Books up to that many slots, each at the earliest instant the window allows, none later than
# now + ahead. A call in flight is stamped again when answered, later, anywhere in the window:
# so only answered entries (final stamps) may say when a slot frees, and each entry in flight
# (the bookings too) holds a slot until then. A booking at T is safe when the answered entries
# later than T - span, plus those in flight, plus itself, are at most the limit.
# Returns {ms until the next slot frees (0: one is free now; blocked by calls in flight: ahead
# plus the ms to come back after), entry, ms until its instant, entry, ms, ...}.
_RESERVE = (
    _NOW_MS
    + _TRIM
    + """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {pause} end
local limit, span = tonumber(ARGV[1]), tonumber(ARGV[2]) + tonumber(ARGV[3])
local want, ahead = tonumber(ARGV[4]), tonumber(ARGV[5])
trim(KEYS[1], KEYS[4], span, tonumber(ARGV[7]))
local answer, taken, last = {0}, 0, now
while true do
  local answered = redis.call('ZCARD', KEYS[4])
  local room = limit - (redis.call('ZCARD', KEYS[1]) - answered)
  local at = now
  if room <= 0 then
    at = -1
  elseif answered >= room then
    local nth = redis.call('ZREVRANGE', KEYS[4], room - 1, room - 1, 'WITHSCORES')
    at = math.max(tonumber(nth[2]) + span, now)
  end
  if taken >= want or at < 0 or at > now + ahead then
    if at < 0 then answer[1] = ahead + tonumber(ARGV[6]) else answer[1] = at - now end
    break
  end
  local entry = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], at, entry)
  answer[#answer + 1] = entry
  answer[#answer + 1] = at - now
  taken, last = taken + 1, at
end
if taken > 0 then keep(KEYS[1], last - now + span + tonumber(ARGV[7])) end
return answer
"""
)

# KEYS: the window, the back-off flag, the entry's adoption mark, and optionally the class's
# pickup samples. ARGV: the entry, window + margin in ms, how long the mark lasts in ms, and with
# the samples' key: the run's pickup in ms, how many samples are kept, their key's lifetime in
# ms (see record_pickup: the same writes, in this round trip).
# A reservation handed over with a message: still in the window and not adopted before, {0, ms
# until its instant} is returned (0: the instant has come; it is stamped now, its call is about
# to be made; a message sent ahead of its slot's instant keeps the booked stamp and its call
# waits for that instant); {-1}: it has left the window (the message came late), or another copy
# of the message adopted it (at-least-once delivery: one slot, one call); {ms}: a 429 pause
# forbids calls now (the entry is dropped).
_ADOPT = (
    _NOW_MS
    + """
if KEYS[4] then
  redis.call('LPUSH', KEYS[4], ARGV[4])
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {pause}
end
local stamp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not stamp then return {-1} end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return {-1} end
if tonumber(stamp) < now then redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1]) end
return {0, math.max(tonumber(stamp) - now, 0)}
"""
)

# KEYS: the class's turn of the next waiter. ARGV: the ms from now before which no turn is
# given, the ms between two turns (the quota's pace), how long past the last turn the key lasts.
# Returns the ms until the caller's turn: the later of that earliest instant and the last turn
# given plus one pace, so that waiters come back one by one at the pace slots free, in the order
# they were turned away (a schedule, as GCRA keeps one). With ARGV[4] = 1, a caller takes a turn
# only behind others: 0, and no turn taken, when nobody waits.
_TURN = (
    _NOW_MS
    + """
local next_turn = tonumber(redis.call('GET', KEYS[1]) or 0)
if ARGV[4] == '1' and next_turn <= now then return 0 end
local turn = math.max(next_turn, now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], turn + tonumber(ARGV[2]), 'PX', turn - now + tonumber(ARGV[3]))
return turn - now
"""
)

# KEYS: the window, the back-off flag. ARGV: limit, window + margin in ms. Read-only.
# Returns {calls in the window (booked ones included), ms until a slot frees (0: one is free),
# ms of 429 pause}.
_CAPACITY = (
    _NOW_MS
    + """
local span = tonumber(ARGV[2])
local used = redis.call('ZCOUNT', KEYS[1], '(' .. (now - span), '+inf')
local frees = 0
if used >= tonumber(ARGV[1]) then
  -- Booked slots may lie ahead: a slot frees when the limit-th newest entry leaves.
  local nth = redis.call('ZREVRANGE', KEYS[1], ARGV[1] - 1, ARGV[1] - 1, 'WITHSCORES')
  frees = math.max(tonumber(nth[2]) + span - now, 1)
end
return {used, frees, math.max(redis.call('PTTL', KEYS[2]), 0)}
"""
)

# KEYS: the window, its answered entries. ARGV: the entry, ms both keys must last. Stamps the
# entry with now, and counts it answered (its stamp is final).
_COMPLETE = (
    _NOW_MS
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < tonumber(ARGV[2]) then redis.call('PEXPIRE', key, ARGV[2]) end
  end
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


@dataclass(frozen=True)
class Capacity:
    """What an API class can admit now: ``free`` calls, and the seconds until the next slot
    frees when none is (``wait_seconds``; 0 while some are free). A 429 pause admits nothing."""

    free: int
    limit: int
    wait_seconds: float
    window_seconds: float


@dataclass(frozen=True)
class Reservation:
    """Entries booked in a class's window for calls to be made later (each by one task), the
    seconds until each one's instant (0: now), and the seconds until the next slot after them
    frees (0: free slots are left)."""

    api_class: str
    entries: list[int]
    wait_seconds: float
    delays: list[float] = field(default_factory=list)


class NoCapacity(Exception):
    """The API class has no capacity now; retry after ``wait_seconds``.

    ``window_seconds``: the class's window, over which a caller spreads its retry, so that
    the callers denied together do not all come back in the instant the next slot frees.
    """

    def __init__(self, api_class: str, wait_seconds: float, window_seconds: float = 0.0) -> None:
        super().__init__(f"no {api_class} capacity for {wait_seconds:.3f}s")
        self.api_class = api_class
        self.wait_seconds = wait_seconds
        self.window_seconds = window_seconds


class LimiterUnreachable(NoCapacity):
    """The limiter's Redis cannot be reached: no call can be admitted, so none is made."""


@contextmanager
def _admitting(api_class: str) -> Iterator[None]:
    """Around a call that admits: unreachable, the limiter admits nothing (and says so)."""
    try:
        yield
    except UNREACHABLE as exc:
        # Not a failure of the work: no quota can be vouched for, so no call is made now.
        log.warning("limiter unreachable (%s): no %s call for now", exc, api_class)
        raise LimiterUnreachable(api_class, UNREACHABLE_WAIT_SECONDS) from None


@contextmanager
def _bookkeeping(what: str) -> Iterator[None]:
    """Around a write after the fact (a re-stamp, a slot given back, a 429 pause shared): the
    call it is about was made, or will not be, and its answer must not be lost to Redis."""
    try:
        yield
    except UNREACHABLE as exc:
        log.warning("limiter unreachable (%s): %s skipped", exc, what)


class GlobalLimiter:
    """Acquire one call of an API class against its account-wide quota."""

    def __init__(
        self,
        redis_url: str,
        limits: dict[str, RateLimitItem],
        margin: float = DEFAULT_MARGIN,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._metrics = metrics or MetricsRecorder(self._redis)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._complete = self._redis.register_script(_COMPLETE)
        self._reserve = self._redis.register_script(_RESERVE)
        self._adopt = self._redis.register_script(_ADOPT)
        self._capacity = self._redis.register_script(_CAPACITY)
        self._turn = self._redis.register_script(_TURN)
        self._windows = {api_class: _window(item, margin) for api_class, item in limits.items()}
        #: Entries this task holds, by class, with the monotonic instant before which their
        #: call must not be made: the next ``acquire`` of the class spends it.
        self._held: ContextVar[dict[str, tuple[int, float]] | None] = ContextVar(
            "bms_held_slots", default=None
        )
        #: How a call early for its slot waits for the slot's instant (tests replace it).
        self.sleep: Callable[[float], None] = time.sleep

    def acquire(self, api_class: str) -> Callable[[], None]:
        """Spend one call of ``api_class``; call what it returns once the call's answer is in.

        Inside :meth:`hold` of the class, the slot held is spent (no Redis round trip); if its
        instant is still ahead (a message sent a lead ahead of it), this waits for the instant:
        the call must not reach the cloud before it.

        :raises NoCapacity: the quota (or a back-off after a 429) forbids a call now, or
            (:class:`LimiterUnreachable`) the limiter cannot tell, its Redis being unreachable.
        """
        held = self._held.get()
        if held and api_class in held:
            entry, due = held.pop(api_class)
            early = due - time.monotonic()
            if early > 0:
                # Everything else of the step is done (row claimed, body built): only the call
                # waits, so that it leaves at the slot's instant, not a pickup later.
                self.sleep(early)
            return self._completion(api_class, entry)
        return self._completion(api_class, self._take(api_class))

    def ping(self) -> None:
        """Open this process's connection to the limiter's Redis (raises when unreachable)."""
        self._redis.ping()

    def capacity(self, api_class: str) -> Capacity:
        """What ``api_class`` can admit now, read without taking anything (one round trip)."""
        limit, window_ms, margin_ms = self._windows[api_class]
        keys = [_window_key(api_class), _backoff_key(api_class)]
        used, frees_ms, pause_ms = self._capacity(keys=keys, args=[limit, window_ms + margin_ms])
        free = 0 if pause_ms else max(limit - int(used), 0)
        wait_ms = pause_ms or (0 if free else int(frees_ms))
        return Capacity(free, limit, wait_ms / 1000, window_ms / 1000)

    def reserve(self, api_class: str, count: int, ahead: float = 0.0) -> Reservation:
        """Book up to ``count`` slots of ``api_class`` for calls that tasks make later: free
        ones, and with ``ahead`` those that free within that many seconds (each call must wait
        for its instant, ``delays``). Each task gets one entry and spends it through
        :meth:`hold`. An entry nobody spends is given back with :meth:`release` (or leaves the
        window by itself)."""
        limit, window_ms, margin_ms = self._windows[api_class]
        keys = [_window_key(api_class), _backoff_key(api_class), f"{KEY_PREFIX}:seq"]
        keys.append(_answered_key(api_class))
        # Blocked by calls in flight: back after about one slot's share of the window.
        retry_ms = max(window_ms // max(limit, 1), 20)
        args = [limit, window_ms, margin_ms, max(count, 0), int(max(ahead, 0) * 1000), retry_ms,
                _grace_ms(window_ms + margin_ms)]  # fmt: skip
        with _admitting(api_class):
            answer = [int(value) for value in self._reserve(keys=keys, args=args)]
        pairs = answer[1:]
        return Reservation(
            api_class, pairs[0::2], answer[0] / 1000, [ms / 1000 for ms in pairs[1::2]]
        )

    def turn(self, api_class: str, earliest: float, behind_others: bool = False) -> float:
        """Seconds until a caller that could book no slot should come back: its turn among the
        callers turned away, one per slot's share of the window, none sooner than ``earliest``.
        Callers turned away earlier come back earlier. ``behind_others``: take a turn only
        when others wait (else 0, and the queue is left as it is).

        :raises LimiterUnreachable: the limiter's Redis cannot be reached.
        """
        limit, window_ms, margin_ms = self._windows[api_class]
        pace_ms = max((window_ms + margin_ms) // max(limit, 1), 1)
        args = [max(int(earliest * 1000), 0), pace_ms, window_ms + margin_ms, int(behind_others)]
        with _admitting(api_class):
            return int(self._turn(keys=[_turn_key(api_class)], args=args)) / 1000

    def release(self, api_class: str, entries: list[int]) -> None:
        """Give back slots taken for calls that will not be made."""
        if entries:
            with _bookkeeping(f"{api_class} slots given back"):
                self._redis.zrem(_window_key(api_class), *entries)
                self._redis.zrem(_answered_key(api_class), *entries)

    @contextmanager
    def hold(
        self, api_class: str, entry: int | None = None, pickup: float | None = None
    ) -> Iterator[None]:
        """Hold one slot of ``api_class`` for the duration: the reservation ``entry`` handed
        over with the message if it is still valid, else one taken now. The first ``acquire``
        of the class inside spends it; a slot not spent is given back at the end.

        Take it before touching anything, so that a call that must wait costs nothing else.

        ``pickup``: a sample for :meth:`record_pickup`, written in the same round trip as the
        adoption of ``entry``.

        :raises NoCapacity: no slot now (nothing was taken).
        """
        if pickup is not None and entry is None:
            self.record_pickup(api_class, pickup)
        slot = self._adopted(api_class, entry, pickup) if entry is not None else None
        if slot is None:
            slot = (self._take(api_class), 0.0)
        held = dict(self._held.get() or {})
        held[api_class] = slot
        token = self._held.set(held)
        try:
            yield
        finally:
            left = held.pop(api_class, None)
            self._held.reset(token)
            if left is not None:
                self.release(api_class, [left[0]])

    def _adopted(
        self, api_class: str, entry: int, pickup: float | None = None
    ) -> tuple[int, float] | None:
        """``entry`` and the monotonic instant its call may be made at, when it still holds its
        slot; ``None`` when it has left the window. ``pickup`` is sampled on the way."""
        limit, window_ms, margin_ms = self._windows[api_class]
        span = window_ms + margin_ms
        keys = [_window_key(api_class), _backoff_key(api_class), _adopted_key(api_class, entry)]
        # The mark outlives the entry (its window, the grace, and how far ahead it was booked).
        args = [entry, span, 2 * span + _grace_ms(span)]
        if pickup is not None:
            keys.append(_pickup_key(api_class))
            args += [_pickup_ms(pickup), PICKUP_SAMPLES, PICKUP_TTL_MS]
        with _admitting(api_class):
            answer = [int(value) for value in self._adopt(keys=keys, args=args)]
        if answer[0] > 0:
            raise self._denied(api_class, answer[0] / 1000)
        if answer[0] < 0:
            return None
        early = answer[1] / 1000
        if early > MAX_EARLY_SECONDS:
            # Not a wait for a pool child: the slot goes back, the task comes back later.
            self.release(api_class, [entry])
            raise self._denied(api_class, early)
        # Counted from the answer's arrival: Redis said it a round trip ago, so the call waits
        # a little longer than needed, never less.
        return entry, time.monotonic() + early

    def record_pickup(self, api_class: str, seconds: float) -> None:
        """A run holding a booked slot of ``api_class`` started ``seconds`` after the instant its
        message was sent for: a sample of the pickup that :meth:`lead` sends messages ahead by."""
        key = _pickup_key(api_class)
        with _bookkeeping(f"{api_class} pickup sample"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(key, _pickup_ms(seconds))
            pipe.ltrim(key, 0, PICKUP_SAMPLES - 1)
            pipe.pexpire(key, PICKUP_TTL_MS)
            pipe.execute()

    def lead(self, api_class: str) -> float:
        """How far ahead of its slot's instant a booked call's message should be sent: the
        pickup most recent runs stayed within (0 before any was sampled), at most
        ``MAX_LEAD_SECONDS``. The run waits for the instant itself (:meth:`acquire`)."""
        with _bookkeeping(f"{api_class} pickup read"):
            samples = sorted(int(ms) for ms in self._redis.lrange(_pickup_key(api_class), 0, -1))
            if samples:
                quantile = samples[min(int(len(samples) * PICKUP_QUANTILE), len(samples) - 1)]
                return min(quantile / 1000, MAX_LEAD_SECONDS)
        return 0.0

    def _take(self, api_class: str) -> int:
        limit, window_ms, margin_ms = self._windows[api_class]
        keys = [_window_key(api_class), _backoff_key(api_class), f"{KEY_PREFIX}:seq"]
        keys.append(_answered_key(api_class))
        args = [limit, window_ms, margin_ms, _grace_ms(window_ms + margin_ms)]
        with _admitting(api_class):
            answer = self._acquire(keys=keys, args=args)
        if answer[0]:
            raise self._denied(api_class, int(answer[0]) / 1000)
        return int(answer[1])

    def _denied(self, api_class: str, wait: float) -> NoCapacity:
        self._metrics.limiter_wait(api_class, wait)
        _limit, window_ms, _margin_ms = self._windows[api_class]
        return NoCapacity(api_class, wait, window_ms / 1000)

    def _completion(self, api_class: str, entry: int) -> Callable[[], None]:
        _limit, window_ms, margin_ms = self._windows[api_class]
        keys, span = [_window_key(api_class), _answered_key(api_class)], window_ms + margin_ms
        # Both keys outlive the stamp by a window and a grace: the answers must last as long
        # as the entries they mark.
        keep_ms = span + _grace_ms(span)

        def completed() -> None:
            # The call was made and its answer is in hand: a create made but never recorded
            # would be far worse than an entry keeping its admission stamp.
            with _bookkeeping(f"{api_class} call re-stamp"):
                self._complete(keys=keys, args=[entry, keep_ms])

        return completed

    def back_off(self, api_class: str, seconds: float | None) -> None:
        """The cloud answered 429: stop every worker calling ``api_class`` for a while."""
        wait = seconds if seconds and seconds > 0 else DEFAULT_BACKOFF_SECONDS
        with _bookkeeping(f"{api_class} 429 pause"):
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


def _window_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:{api_class}"


def _grace_ms(span_ms: int) -> int:
    """How long past its window an entry still in flight keeps its slot."""
    return max(span_ms, GRACE_MIN_MS)


def _pickup_ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


def _pickup_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:pickup:{api_class}"


def _answered_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:answered:{api_class}"


def _adopted_key(api_class: str, entry: int) -> str:
    return f"{KEY_PREFIX}:adopted:{api_class}:{entry}"


def _turn_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:turn:{api_class}"


def _backoff_key(api_class: str) -> str:
    return f"{KEY_PREFIX}:backoff:{api_class}"
