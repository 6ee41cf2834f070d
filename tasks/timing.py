"""How long to wait: poll delays per job kind, their deadlines, and the create backoff.

Polls start soon and back off towards a ceiling that depends on the job kind (a bare metal
create takes minutes, an attach seconds); a deadline per kind ends the wait as a failure.
Delays, not deadlines, are multiplied by ``BMS_DELAY_SCALE`` (quick simulated jobs).
"""

from __future__ import annotations

from models.records import JobKind
from worker.runtime import runtime

#: kind -> (first poll, ceiling) in seconds.
POLL_DELAYS = {
    JobKind.CREATE: (5.0, 30.0),
    JobKind.ATTACH: (2.0, 10.0),
    JobKind.DELETE: (5.0, 30.0),
    JobKind.DETACH: (2.0, 10.0),
}
#: kind -> seconds after which a job still running counts as failed.
DEADLINES = {
    JobKind.CREATE: 45 * 60.0,
    JobKind.ATTACH: 10 * 60.0,
    JobKind.DELETE: 30 * 60.0,
    JobKind.DETACH: 10 * 60.0,
}
POLL_GROWTH = 1.5
CREATE_BACKOFF_BASE = 10.0
CREATE_BACKOFF_MAX = 300.0


def _scale() -> float:
    return runtime().settings.delay_scale


def first_poll(kind: JobKind) -> float:
    return POLL_DELAYS[kind][0] * _scale()


def next_poll(kind: JobKind, polls_done: int) -> float:
    first, ceiling = POLL_DELAYS[kind]
    return min(first * POLL_GROWTH**polls_done, ceiling) * _scale()


def create_backoff(attempt: int) -> float:
    """Wait before create attempt ``attempt + 1``: 10 s, 20 s, 40 s ... up to 5 minutes."""
    return min(CREATE_BACKOFF_BASE * 2 ** max(attempt - 1, 0), CREATE_BACKOFF_MAX) * _scale()
