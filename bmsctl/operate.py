"""``bmsctl submit | watch | status | show | retry | cancel | teardown``: work with a running
orchestrator through its REST API (see ``bmsctl.apiclient`` for how it is found).

Whatever the API hands back is printed through ``bmsctl.render`` (no markup, no raw control
characters); piped or redirected, the output is plain lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from bmsctl.apiclient import ApiClient
    from bmsctl.watching import Progressor

# Each command imports what it uses when it runs: ``bmsctl`` registers every command before it
# runs one, and a ``cancel`` must not pay for the batch spec (pydantic) or the rendering.


def register(subparsers) -> None:
    submit = _command(subparsers, "submit", "submit a batch file (YAML or JSON)", run_submit)
    submit.add_argument("file", type=Path)
    submit.add_argument("--watch", action="store_true", help="follow it until it ends")
    submit.add_argument("--idempotency-key", help="resubmitting with it creates nothing new")
    submit.add_argument(
        "--check",
        action="store_true",
        help="only run the preflight (nothing stored, nothing created); exit 1 if refused",
    )

    watch_cmd = _command(subparsers, "watch", "follow a batch until it ends", run_watch)
    watch_cmd.add_argument("batch")

    status = _command(subparsers, "status", "batches, or one batch's requests", run_status)
    status.add_argument("batch", nargs="?")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    show = _command(subparsers, "show", "one request: state, error, volumes, timeline", run_show)
    show.add_argument("request", help="a request id (as listed by status BATCH --json)")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    teardown = _command(
        subparsers,
        "teardown",
        "delete a batch's servers (ACTIVE, or left by FAILED or CANCELLED requests), "
        "detaching their volumes first; the volumes are kept",
        run_teardown,
    )
    teardown.add_argument("batch")
    teardown.add_argument("--watch", action="store_true", help="follow it until it ends")

    for name, verb in (("retry", "retry FAILED requests"), ("cancel", "cancel requests")):
        command = _command(subparsers, name, f"{verb} of a batch, or one request", run_operation)
        command.add_argument("id", help="a batch id, or a request id with --request")
        command.add_argument("--request", action="store_true", help="the id is a request's")


def _command(subparsers, name: str, text: str, func):
    parser = subparsers.add_parser(name, help=text, description=text)
    parser.add_argument("--api", help="API base URL (default: BMS_API_URL, var/stack.json, :8000)")
    parser.set_defaults(func=_guarded(func))
    return parser


def _guarded(func):
    def run(args) -> int:
        from rich.console import Console

        from bmsctl.apiclient import ApiClient, ApiError

        try:
            return func(args, ApiClient.from_args(args), Console())
        except ApiError as exc:
            print(f"bmsctl {args.command}: {clean_lines(exc)}", file=sys.stderr)
            return 1

    return run


def run_submit(args, client: ApiClient, console: Console) -> int:
    from bmsctl.batchfile import BatchFileError, load_batch
    from bmsctl.render import clean, emit, print_batch
    from bmsctl.watching import watch
    from models.canonical import canonical_body
    from models.spec import SpecError

    try:
        spec = load_batch(args.file)
    except BatchFileError as exc:
        print(f"bmsctl submit: {clean(args.file)}: {clean(exc)}", file=sys.stderr)
        return 2
    except SpecError as exc:
        # The API checks it too; this names bad fields before any call.
        print(f"bmsctl submit: {clean(args.file)}: {clean_lines(exc)}", file=sys.stderr)
        return 2
    if args.check:
        report = client.dry_run(canonical_body(spec))
        for line in preflight_text(str(args.file), report).splitlines():
            emit(console, clean(line))
        return 0 if report["ok"] else 1
    # The validated batch, not the file: aliases, dates or comments of YAML never travel.
    submitted = client.submit(canonical_body(spec), args.idempotency_key)
    emit(console, f"batch {submitted['batch_id']}: {len(submitted['requests'])} request(s)")
    if not args.watch:
        return 0
    final = watch(client, str(submitted["batch_id"]), console)
    print_batch(console, client.batch(final["id"]))
    return 0 if final["counts"].get("ACTIVE", 0) == final["total"] else 1


def clean_lines(exc: Exception) -> str:
    """A multi-line message with each line made safe (the newlines kept)."""
    from bmsctl.render import clean

    return "\n".join(clean(line) for line in str(exc).splitlines())


def preflight_text(source: str, report: dict) -> str:
    """A dry run's report, for people (plain text: field paths hold brackets)."""
    verdict = "OK" if report["ok"] else "REFUSED"
    lines = [
        f"preflight of {source}: {verdict} (nothing stored, nothing created)",
        f"  servers: {report['servers']}",
        f"  create calls: {report['create_calls']} one by one, "
        f"{report['create_calls_grouped']} with grouping (up to {report['create_group_max']} "
        "servers a call)",
        f"  cloud reads: {report['cloud_reads']}",
    ]
    for quota in report["quotas"]:
        left = "no limit" if quota["left"] is None else f"{quota['left']} left of {quota['limit']}"
        lines.append(f"  {quota['name']}: needs {quota['needed']}, {left}")
    if report["problems"]:
        lines.append("problems:")
    for problem in report["problems"]:
        servers = ", ".join(problem["servers"]) or "the whole batch"
        lines.append(f"  {problem['field']}: {problem['message']} ({servers})")
    if report["warnings"]:
        lines.append("not checked:")
    lines += [f"  {warning}" for warning in report["warnings"]]
    return "\n".join(lines)


def run_watch(args, client: ApiClient, console: Console) -> int:
    from bmsctl.render import print_batch
    from bmsctl.watching import watch

    final = watch(client, args.batch, console)
    print_batch(console, client.batch(final["id"]))
    return 0


def run_status(args, client: ApiClient, console: Console) -> int:
    from bmsctl.render import batch_list_lines, emit, print_batch

    view = client.batch(args.batch) if args.batch else client.batches()
    if args.json:
        print(json.dumps(view, indent=2))
    elif args.batch:
        print_batch(console, view)
    else:
        for line in batch_list_lines(view):
            emit(console, line)
    return 0


def run_show(args, client: ApiClient, console: Console) -> int:
    from bmsctl.render import emit, request_lines

    view = client.request(args.request)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        for line in request_lines(view):
            emit(console, line)
    return 0


def run_operation(args, client: ApiClient, console: Console) -> int:
    if args.command == "retry":
        answer = client.retry_request(args.id) if args.request else client.retry_batch(args.id)
    else:
        answer = client.cancel_request(args.id) if args.request else client.cancel_batch(args.id)
    print(json.dumps(answer, indent=2))
    return 0


def run_teardown(args, client: ApiClient, console: Console) -> int:
    from bmsctl.render import clean, emit, print_batch

    answer = client.teardown_batch(args.batch)
    started = answer["tearing_down"]
    emit(console, f"batch {answer['batch_id']}: tearing down {len(started)} request(s)")
    for skipped in answer["skipped"]:
        emit(console, f"  skipped {skipped['id']}: {clean(skipped['reason'])}")
    if not args.watch or not started:
        return 0
    from bmsctl.watching import watch  # models and the settings: only when following

    final = watch(client, args.batch, console, progress_of=teardown_progress(started))
    print_batch(console, final)
    torn_down = [r for r in final["requests"] if r["id"] in set(started)]
    return 0 if all(r["state"] == "TORN_DOWN" for r in torn_down) else 1


def teardown_progress(request_ids: list[str]) -> Progressor:
    """Done: the requests this teardown started, less those of the batch still TEARING_DOWN.

    Read off the batch's counts, not its requests: the watch fetches one request per poll
    (however large the batch), so a count of the started ones found in that page would never
    reach the total. A request still TEARING_DOWN from an earlier teardown is waited for too.
    """
    total = len(set(request_ids))

    def progress(batch: dict) -> tuple[int, int]:
        return max(0, total - batch["counts"].get("TEARING_DOWN", 0)), total

    return progress
