"""``bmsctl demo``: provision the example batch against the simulator and report (``make demo``).

Until the orchestration stack lands, it validates the example batch and shows the plan.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.spec import SpecError, load_batch_file

EXAMPLE_BATCH = Path(__file__).resolve().parent.parent / "examples" / "batch.yaml"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="provision the example batch on the simulator")
    parser.add_argument("--batch", type=Path, default=EXAMPLE_BATCH, help="batch file to run")
    parser.set_defaults(func=run)


def run(args) -> int:
    console = Console()
    try:
        batch = load_batch_file(args.batch)
    except SpecError as exc:
        console.print(f"[red]{args.batch}: {exc}[/red]")
        return 1
    table = Table(title=f"batch {batch.name}: {len(batch.expand())} servers")
    for column in ("name", "flavor", "volumes to attach", "tags"):
        table.add_column(column)
    for server in batch.expand():
        table.add_row(
            server.name,
            server.create_body["flavorRef"],
            str(len(server.attach_volumes)),
            ", ".join(server.tags),
        )
    console.print(table)
    console.print("[yellow]The orchestration stack is not built yet: nothing was provisioned.")
    return 0
