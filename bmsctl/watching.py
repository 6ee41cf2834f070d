"""Following a batch: a rich progress bar with counts per state and an estimate of time left
(plain lines when the output is not a terminal), and the summary printed when it ends.

The estimate is the larger of two: the time left at the rate requests have finished so far,
and the time the busiest API class needs for the calls still to make at its quota
(``BMS_RATE_LIMITS``, the workers' own setting). Early on, before any request finished, the
rate says nothing, while the quota already bounds a large batch (50 creates a minute).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from bmsctl.apiclient import ApiClient
from bmsctl.render import clean, counts_text, emit, print_batch, summary_table  # noqa: F401
from models.states import TERMINAL_STATES
from worker.settings import DEFAULT_RATE_LIMITS, parse_rate_limits

TERMINAL = {s.value for s in TERMINAL_STATES}
#: Also imported from here by other commands (demo): summary_table, counts_text.
__all__ = ["counts_text", "summary_table", "watch"]

#: Cloud calls a request in this state still has to make, per API class (attachments are not
#: in the batch view, so their calls are left out: the estimate stays a lower bound).
CALLS_LEFT: dict[str, dict[str, int]] = {
    "PENDING": {"create": 1, "update": 1},
    "CREATING": {"create": 1, "update": 1},
    "BUILDING": {"update": 1},
    "ATTACHING": {"update": 1},
    "TAGGING": {"update": 1},
    "TEARING_DOWN": {"list": 1},
}

#: ``(done, total)`` of what is being followed, from the batch view.
Progressor = Callable[[dict], tuple[int, int]]


def finished(batch: dict) -> int:
    return sum(n for state, n in batch["counts"].items() if state in TERMINAL)


def provisioning(batch: dict) -> tuple[int, int]:
    return finished(batch), batch["total"]


def quotas_per_second(text: str | None = None) -> dict[str, float]:
    """Calls per second of each API class, from ``BMS_RATE_LIMITS`` (the defaults if unset
    or unreadable: the estimate must never stop a watch)."""
    text = text if text is not None else os.environ.get("BMS_RATE_LIMITS", DEFAULT_RATE_LIMITS)
    try:
        items = parse_rate_limits(text)
    except ValueError:
        items = parse_rate_limits(DEFAULT_RATE_LIMITS)
    return {name: item.amount / item.get_expiry() for name, item in items.items()}


def quota_seconds(counts: dict[str, int], quotas: dict[str, float]) -> float:
    """Seconds the busiest API class needs for the calls the requests still have to make."""
    calls: Counter[str] = Counter()
    for state, number in counts.items():
        for api_class, per_request in CALLS_LEFT.get(state, {}).items():
            calls[api_class] += per_request * number
    return max((n / quotas[c] for c, n in calls.items() if quotas.get(c)), default=0.0)


def eta_text(
    done: int, total: int, elapsed: float, counts: dict[str, int] | None = None, quotas=None
) -> str:
    """Time left: at the rate requests have finished so far, and no less than the quota of the
    busiest class allows."""
    if done == total:
        return ""
    by_rate = elapsed / done * (total - done) if done else 0.0
    by_quota = quota_seconds(counts or {}, quotas if quotas is not None else quotas_per_second())
    seconds = max(by_rate, by_quota)
    if seconds <= 0:
        return ""
    return f"~{seconds:.0f}s left"


def watch(
    client: ApiClient,
    batch_id: str,
    console: Console,
    timeout: float | None = None,
    progress_of: Progressor = provisioning,
) -> dict:
    """Follow the batch until ``progress_of`` says done; returns the last view."""
    started = time.monotonic()
    quotas = quotas_per_second()
    # Counts are all the bar needs: one request per poll, however large the batch.
    batch = client.batch(batch_id, limit=1)
    shown = None
    with _Bar(console, batch["name"]) as bar:
        while True:
            done, total = progress_of(batch)
            elapsed = time.monotonic() - started
            eta = eta_text(done, total, elapsed, batch["counts"], quotas)
            view = (done, total, counts_text(batch["counts"]))
            if view != shown:
                bar.update(done, total, view[2], eta)
                shown = view
            if done >= total:
                return client.batch(batch_id)  # every request, for the summary
            if timeout is not None and elapsed > timeout:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout:.0f}s")
            time.sleep(0.5)
            batch = client.batch(batch_id, limit=1)


class _Bar:
    """A progress bar on a terminal; elsewhere one plain line per change."""

    def __init__(self, console: Console, name: str) -> None:
        self.console, self.name = console, clean(name)
        self.progress = None
        if console.is_terminal:
            columns = [
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[states]}"),
                TextColumn("[dim]{task.fields[eta]}"),
            ]
            self.progress = Progress(*columns, console=console, transient=False)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.__enter__()
            # The description is markup: a name like "[/bold]" must be shown, not parsed.
            self.task = self.progress.add_task(escape(self.name), total=None, states="", eta="")
        return self

    def update(self, done: int, total: int, states: str, eta: str) -> None:
        if self.progress is None:
            emit(self.console, f"{self.name}: {done}/{total}  {states}  {eta}".rstrip())
            return
        self.progress.update(self.task, completed=done, total=total, states=states, eta=eta)

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc_info)


def summary(console: Console, batch: dict) -> None:
    """The table (or plain lines) printed when a watch ends."""
    print_batch(console, batch)
