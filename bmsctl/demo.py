"""``bmsctl demo`` (what ``make demo`` runs): start the embedded stack, provision the example
batch against the simulator, follow it, print a summary, stop everything.

Exits 0 when every request ended ACTIVE. It runs in its own directory with its own SQLite
database (``var/demo``, fresh each time) unless ``BMS_DATABASE_URL`` says otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bmsctl.lock import LOCK_FILE, StackLock, StackLocked
from bmsctl.up import addresses_table, raising_on_signals, stopping_on_signals

if TYPE_CHECKING:
    from rich.console import Console

    from bmsctl.stack import EmbeddedStack

# The rest is imported where used: ``bmsctl`` registers this command for every command it runs,
# and a client command must not pay for the stack (Celery, SQLAlchemy) or the batch spec.

EXAMPLE_BATCH = Path(__file__).resolve().parent.parent / "examples" / "batch.yaml"
#: Longest the demo waits for the batch; the example takes well under a minute.
DEMO_TIMEOUT_SECONDS = 300


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="provision the example batch on the simulator")
    parser.add_argument("--batch", type=Path, default=EXAMPLE_BATCH, help="batch file to run")
    parser.add_argument("--dir", type=Path, default=Path("var/demo"), help="logs and database")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from bmsctl.apiclient import ApiError
    from bmsctl.stack import EmbeddedStack, StackError, StackOptions
    from models.spec import SpecError, parse_batch, read_batch_file

    console = Console()
    try:
        body = read_batch_file(args.batch)
        parse_batch(body)
    except SpecError as exc:
        print(f"bmsctl demo: {args.batch}: {exc}", file=sys.stderr)
        return 2
    lock = StackLock(args.dir)
    try:
        lock.acquire()  # before clearing the directory: it may be another demo's
    except StackLocked as exc:
        print(f"bmsctl demo: {exc}", file=sys.stderr)
        return 1
    stack = EmbeddedStack(_demo_settings(args.dir), StackOptions(args.dir, 0, 0, "0.3-1.5"))
    stack.lock = lock
    with stopping_on_signals(threading.Event()):
        try:
            with raising_on_signals():
                stack.start()
                console.print(addresses_table(stack))
                return _provision(stack, body, console)
        except (StackError, ApiError, TimeoutError) as exc:
            print(f"bmsctl demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bmsctl demo: interrupted; stopping the stack", file=sys.stderr)
            return 130
        finally:
            stopped = stack.stop()
            # Like `up`'s last line (plain print: one line whatever the terminal's width);
            # the demo's data lasts only until the next demo.
            print(
                f"stack stopped: {stopped} children stopped; logs and database in "
                f"{stack.options.directory}/ until the next demo",
                flush=True,
            )


def _demo_settings(directory: Path):
    """A fresh database in the demo's directory; quick polls for the quick simulated jobs."""
    from worker.settings import load_settings

    for entry in directory.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    overrides = {"delay_scale": 0.2, "create_lookup_grace_seconds": 5}
    if not os.environ.get("BMS_DATABASE_URL"):
        overrides["database_url"] = f"sqlite:///{directory.resolve() / 'demo.db'}"
    return load_settings(**overrides)


def _provision(stack: EmbeddedStack, body: dict, console: Console) -> int:
    from bmsctl.apiclient import ApiClient
    from bmsctl.watching import summary_table, watch

    client = ApiClient(stack.addresses["api"].split()[0])
    submitted = client.submit(body)
    batch_id = str(submitted["batch_id"])
    console.print(f"submitted batch {batch_id}: {len(submitted['requests'])} servers")
    final = watch(client, batch_id, console, timeout=DEMO_TIMEOUT_SECONDS)
    console.print(summary_table(final))
    active = final["counts"].get("ACTIVE", 0)
    console.print(f"{active} of {final['total']} servers ACTIVE")
    return 0 if active == final["total"] else 1
