"""What the command line prints about batches and requests, safe for any terminal.

Every value that came from the API (names, messages, ids) can hold what a user typed: it is
printed as text, never as rich markup, and its control characters (ESC, CR, tabs, bidi
overrides) are shown as escapes (``\\x1b``). On a terminal a batch is a table; piped or
redirected, it is plain tab-separated lines that nothing wraps.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: C0 and C1 controls, DEL, and the invisible characters that reorder or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

STATE_STYLES = {"ACTIVE": "green", "FAILED": "red", "TORN_DOWN": "dim", "CANCELLED": "dim"}


def clean(value: Any) -> str:
    """``value`` as text with every unsafe character escaped."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def counts_text(counts: dict[str, int]) -> str:
    # Imported here: the ``models`` package loads SQLAlchemy and every table, which ``clean``,
    # ``emit`` and ``request_lines`` (an error message, ``show``) need not pay for.
    from models.states import RequestState

    return "  ".join(f"{s.value} {counts[s.value]}" for s in RequestState if counts.get(s.value))


def error_text(request: dict) -> str:
    """``CODE: message`` of a request's last error ("" when it has none)."""
    code, message = request.get("last_error_code"), request.get("last_error_message")
    if not code and not message:
        return ""
    return clean(f"{code}: {message}" if code and message else code or message)


def emit(console: Console, line: str) -> None:
    """One line, as is: no markup, no wrapping (``line`` must be clean already)."""
    print(line, file=console.file, flush=True)


def summary_table(batch: dict) -> Table:
    table = Table(title=Text(f"batch {clean(batch['name'])} ({batch['id']})"))
    for column in ("server", "state", "attempts", "server id", "failed step", "error"):
        table.add_column(column)
    for request in batch["requests"]:
        state = request["state"]
        table.add_row(
            Text(clean(request["name"])),
            Text(clean(state), style=STATE_STYLES.get(state, "yellow")),
            str(request["attempt"]),
            Text(clean(request["server_id"])),
            Text(clean(request["failed_step"])),
            Text(error_text(request)),
        )
    return table


def batch_lines(batch: dict) -> list[str]:
    """A batch as plain lines: a heading, then one tab-separated line per request."""
    lines = [
        f"batch {clean(batch['name'])} ({batch['id']}): {counts_text(batch['counts'])}",
        "\t".join(("server", "state", "attempts", "server_id", "failed_step", "error")),
    ]
    for request in batch["requests"]:
        fields = (request["name"], request["state"], request["attempt"], request["server_id"])
        fields += (request["failed_step"],)
        lines.append("\t".join([*(clean(f) for f in fields), error_text(request)]))
    return lines


def print_batch(console: Console, batch: dict) -> None:
    if console.is_terminal:
        console.print(summary_table(batch))
    else:
        for line in batch_lines(batch):
            emit(console, line)


def batch_list_lines(page: dict) -> list[str]:
    return [
        f"{batch['id']}  {clean(batch['name']):<24} {counts_text(batch['counts'])}"
        for batch in page["items"]
    ]


def request_lines(request: dict) -> list[str]:
    """One request: what it is, where it stands, why it failed, and its timeline."""
    lines = [
        f"request {request['id']}  {clean(request['name'])}  (batch {request['batch_id']})",
        f"state      {clean(request['state'])}  attempts {request['attempt']}",
        f"server id  {clean(request['server_id']) or '-'}",
    ]
    if request.get("failed_step"):
        lines.append(f"failed at  {clean(request['failed_step'])}")
    if error_text(request):
        lines.append(f"error      {error_text(request)}")
    for attachment in request.get("attachments", []):
        lines.append(
            f"volume     {clean(attachment['volume_id'])}  {clean(attachment['state'])}"
            f"  {clean(attachment['device']) or ''}".rstrip()
        )
    lines.append("timeline")
    for event in request.get("events", []):
        change = clean(event["to_state"])
        if event["from_state"] and event["from_state"] != event["to_state"]:
            change = f"{clean(event['from_state'])} -> {change}"
        detail = f"  {clean(event['detail'])}" if event.get("detail") else ""
        lines.append(f"  {clean(event['at'])}  {change}{detail}")
    return lines
