"""Supervision of ``bmsctl up``: a child that dies is restarted with back-off, and the stack
gives up only on a child that keeps dying.

Each death is logged in one line (which part, its pid, the signal or exit code, when it comes
back). A child that dies ``max_deaths`` times within ``window`` seconds ends the stack, with
that reason: restarting it again would hide a fault that needs a person.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from bmsctl.processes import ManagedProcess, describe_exit
from bmsctl.stack import EmbeddedStack, StackError


@dataclass(frozen=True)
class RestartPolicy:
    max_deaths: int = 5
    window: float = 60.0
    #: The first restart waits this long; each further death within the window doubles it.
    first_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, recent_deaths: int) -> float:
        return min(self.first_delay * 2 ** (recent_deaths - 1), self.max_delay)


class Supervisor:
    """``check()`` once a tick: restarts what is due, and returns a reason to give up or None."""

    def __init__(
        self,
        stack: EmbeddedStack,
        policy: RestartPolicy | None = None,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.policy = policy or RestartPolicy()
        self.log = log
        self.clock = clock
        self.deaths: dict[str, deque[float]] = defaultdict(deque)
        #: name -> when its restart is due.
        self.pending: dict[str, float] = {}

    def check(self) -> str | None:
        """Record new deaths and restart what is due, in start order: a child waits for the
        ones started before it (Redis before the workers that need it) to be back."""
        now = self.clock()
        waiting_for_earlier = False
        for child in list(self.stack.children):
            reason = None
            if child.name not in self.pending and not child.alive():
                reason = self._record_death(child, describe_exit(child.returncode), now)
            elif (
                child.name in self.pending
                and now >= self.pending[child.name]
                and not waiting_for_earlier
            ):
                reason = self._restart(child)
            if reason:
                return reason
            waiting_for_earlier = waiting_for_earlier or child.name in self.pending
        return None

    def _record_death(self, child: ManagedProcess, how: str, now: float) -> str | None:
        deaths = self.deaths[child.name]
        deaths.append(now)
        while deaths and deaths[0] < now - self.policy.window:
            deaths.popleft()
        if len(deaths) >= self.policy.max_deaths:
            return (
                f"{child.name} keeps dying ({len(deaths)} times in "
                f"{self.policy.window:.0f}s; last: pid {child.pid} {how})"
            )
        delay = self.policy.delay(len(deaths))
        self.log(f"{child.name} (pid {child.pid}) {how}; restarting in {delay:.1f}s")
        self.pending[child.name] = now + delay
        return None

    def _restart(self, child: ManagedProcess) -> str | None:
        del self.pending[child.name]
        try:
            handed_back = self.stack.restart(child)
        except StackError as exc:
            first_line = str(exc).splitlines()[0]
            return self._record_death(child, f"failed to restart: {first_line}", self.clock())
        except Exception as exc:  # noqa: BLE001 - whatever breaks a restart counts as a death
            how = f"failed to restart: {type(exc).__name__}: {exc}"
            return self._record_death(child, how, self.clock())
        held = f"; {handed_back} message(s) it held handed back" if handed_back else ""
        self.log(f"{child.name} restarted (pid {child.pid}){held}")
        return None
