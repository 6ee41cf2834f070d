"""Following a batch: a rich progress bar with counts per state and an estimate of time left,
and the summary table printed when it ends."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from bmsctl.apiclient import ApiClient
from models.states import TERMINAL_STATES, RequestState

ORDER = [s.value for s in RequestState]
TERMINAL = {s.value for s in TERMINAL_STATES}


def counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{state} {counts[state]}" for state in ORDER if counts.get(state))


def finished(batch: dict) -> int:
    return sum(n for state, n in batch["counts"].items() if state in TERMINAL)


def eta_text(done: int, total: int, elapsed: float) -> str:
    """Time left at the rate requests have finished so far."""
    if done == 0 or done == total:
        return ""
    seconds = elapsed / done * (total - done)
    return f"~{seconds:.0f}s left"


def watch(client: ApiClient, batch_id: str, console: Console, timeout: float | None = None) -> dict:
    """Follow the batch until every request is in a final state; returns the last view."""
    started = time.monotonic()
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[states]}"),
        TextColumn("[dim]{task.fields[eta]}"),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        batch = client.batch(batch_id)
        bar = progress.add_task(batch["name"], total=batch["total"], states="", eta="")
        while True:
            done = finished(batch)
            elapsed = time.monotonic() - started
            progress.update(
                bar,
                completed=done,
                states=counts_text(batch["counts"]),
                eta=eta_text(done, batch["total"], elapsed),
            )
            if done == batch["total"]:
                return batch
            if timeout is not None and elapsed > timeout:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout:.0f}s")
            time.sleep(0.5)
            batch = client.batch(batch_id)


def summary_table(batch: dict) -> Table:
    table = Table(title=f"batch {batch['name']} ({batch['id']})")
    for column in ("server", "state", "attempts", "server id", "failed step"):
        table.add_column(column)
    for request in batch["requests"]:
        style = {"ACTIVE": "green", "FAILED": "red"}.get(request["state"], "yellow")
        table.add_row(
            request["name"],
            f"[{style}]{request['state']}[/{style}]",
            str(request["attempt"]),
            request["server_id"] or "",
            request["failed_step"] or "",
        )
    return table
