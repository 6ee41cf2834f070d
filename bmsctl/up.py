"""``bmsctl up``: the whole stack on this machine, in the foreground, until Ctrl-C, SIGTERM or
SIGHUP (a closed terminal); a child that dies is restarted (``bmsctl.supervise``)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from bmsctl.stack import EmbeddedStack

# The stack, rich and the settings are imported where used: ``bmsctl`` registers this command
# for every command it runs, and a client command must not pay for Celery or SQLAlchemy.


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole stack here (Redis, simulator, workers, beat, Flower, API)",
        description="Run the whole stack in the foreground; Ctrl-C, SIGTERM or SIGHUP stops all "
        "of it. A part that dies is restarted; one that keeps dying stops the stack.",
    )
    parser.add_argument("--dir", type=Path, default=Path("var"), help="logs and state (var/)")
    parser.add_argument("--job-seconds", default="0.5-2", help="simulated job durations")
    parser.add_argument("--concurrency", type=int, default=4, help="cloud worker processes")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start the embedded simulator with an empty cloud (forget DIR/simulator.json)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from bmsctl.stack import EmbeddedStack, StackError, StackLocked, StackOptions
    from bmsctl.supervise import Supervisor
    from worker.settings import get_settings

    console = Console()
    options = StackOptions(
        directory=args.dir,
        simulator_job_seconds=args.job_seconds,
        worker_concurrency=args.concurrency,
        fresh=args.fresh,
    )
    stack = EmbeddedStack(get_settings(), options)
    stopping = threading.Event()
    with stopping_on_signals(stopping):
        try:
            stack.start()
        except (StackLocked, StackError) as exc:
            print(f"bmsctl up: {exc}", file=sys.stderr)
            return 1
        try:
            console.print(addresses_table(stack))
            for note in stack.notes:
                console.print(note)
            console.print("Ctrl-C stops everything.")
            supervisor = Supervisor(stack, log=lambda line: print(f"bmsctl up: {line}", flush=True))
            while not stopping.wait(0.5):
                reason = supervisor.check()
                if reason:
                    print(f"bmsctl up: giving up: {reason}", file=sys.stderr)
                    return 1
        finally:
            stopped = stack.stop()
            # The last line: what stopped, and that nothing was deleted. A closed terminal
            # (SIGHUP) may not take it: that must not turn a clean stop into a traceback.
            with contextlib.suppress(OSError):
                print(f"bmsctl up: {closing_line(stack, stopped)}", flush=True)
    return 0


def closing_line(stack: EmbeddedStack, stopped: int) -> str:
    """``stack stopped: N children stopped, data kept in var/ and <database>``."""
    database = stack.addresses.get("database") or stack.settings.redacted_database_url
    directory = f"{stack.options.directory}/"
    return f"stack stopped: {stopped} children stopped, data kept in {directory} and {database}"


def addresses_table(stack: EmbeddedStack) -> Table:
    from rich.table import Table

    table = Table(title="bms-orchestrator is up", show_header=False)
    for part, address in stack.addresses.items():
        table.add_row(part, address)
    table.add_row("logs", str(stack.options.directory))
    return table


#: What stops the stack: Ctrl-C, ``kill``, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class stopping_on_signals:
    """SIGINT, SIGTERM and SIGHUP set ``event`` instead of killing us half-way through a stop."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __enter__(self):
        self.previous = {
            signum: signal.signal(signum, lambda *_: self.event.set()) for signum in STOP_SIGNALS
        }
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class raising_on_signals:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` wherever the main thread is (for
    ``demo``, which has no loop of its own to check an event); the previous handlers come back
    on exit, so that the stop that follows is not interrupted in turn.

    A signal that arrives while the main thread runs a finalizer or a ``__del__`` raises there,
    where Python prints the exception and drops it ("Exception ignored in ..."): seen as a demo
    that went on to the end after Ctrl-C. So the interrupt is raised again every
    ``REPEAT_SECONDS`` until the block has been left."""

    REPEAT_SECONDS = 0.5

    def __enter__(self):
        self.left = threading.Event()
        self.repeater: threading.Thread | None = None
        self.previous = {signum: signal.signal(signum, self._interrupt) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self.left.set()
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _interrupt(self, signum, frame) -> None:
        if self.repeater is None:
            self.repeater = threading.Thread(
                target=self._repeat, args=(signum,), name="interrupt-repeater", daemon=True
            )
            self.repeater.start()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _repeat(self, signum: int) -> None:
        main = threading.main_thread().ident
        while not self.left.wait(self.REPEAT_SECONDS):
            signal.pthread_kill(main, signum)  # to the main thread: it wakes from a sleep
