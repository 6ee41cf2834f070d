"""``bmsctl up``: the whole stack on this machine, in the foreground, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bmsctl.stack import EmbeddedStack, StackError, StackOptions
from worker.settings import get_settings


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole stack here (Redis, simulator, workers, beat, Flower, API)",
        description="Run the whole stack in the foreground; Ctrl-C or SIGTERM stops all of it.",
    )
    parser.add_argument("--dir", type=Path, default=Path("var"), help="logs and state (var/)")
    parser.add_argument("--job-seconds", default="0.5-2", help="simulated job durations")
    parser.add_argument("--concurrency", type=int, default=4, help="cloud worker processes")
    parser.set_defaults(func=run)


def run(args) -> int:
    console = Console()
    options = StackOptions(
        directory=args.dir,
        simulator_job_seconds=args.job_seconds,
        worker_concurrency=args.concurrency,
    )
    stack = EmbeddedStack(get_settings(), options)
    stopping = threading.Event()
    with stopping_on_signals(stopping):
        try:
            stack.start()
        except StackError as exc:
            print(f"bmsctl up: {exc}", file=sys.stderr)
            return 1
        try:
            console.print(addresses_table(stack))
            console.print("Ctrl-C stops everything.")
            while not stopping.wait(1.0):
                dead = stack.dead_children()
                if dead:
                    print(f"bmsctl up: {dead[0].name} exited:\n{dead[0].tail()}", file=sys.stderr)
                    return 1
        finally:
            stack.stop()
    return 0


def addresses_table(stack: EmbeddedStack) -> Table:
    table = Table(title="bms-orchestrator is up", show_header=False)
    for part, address in stack.addresses.items():
        table.add_row(part, address)
    table.add_row("logs", str(stack.options.directory))
    return table


class stopping_on_signals:
    """SIGINT and SIGTERM set ``event`` instead of killing us half-way through a stop."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __enter__(self):
        self.previous = {
            signum: signal.signal(signum, lambda *_: self.event.set())
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
