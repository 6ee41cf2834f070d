"""Which servers of a batch one ``count`` create could make together, and how many create calls
a batch costs with and without that grouping.

The BMS create takes ``count`` (reference section 5): one call makes up to 100 servers named
``name-0000``, ``name-0001``, ... So servers can share a call when their create bodies are
identical apart from the name, and their names are exactly those a count create gives, in
order (``web-0000``, ``web-0001``, ...). A server with a fixed IP or an existing EIP cannot be
made by a count create (section 5), and a name of its own is not a count name: those go one by
one. A group longer than ``BMS_CREATE_GROUP_MAX`` is cut into chunks, one call each (the names
of the chunks after the first are not the ones a count create gives them; that is for the
create step to handle).

Pure functions over create bodies: the preflight counts with them today, the create planner
may group with them later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: A name a count create gives: the base name, ``-``, four digits.
COUNT_NAME = re.compile(r"^(?P<base>.+)-(?P<index>\d{4})$")
#: The API's ceiling on ``count``.
API_MAX_COUNT = 100


def groupable(body: dict[str, Any]) -> bool:
    """Whether a count create could make this server: no fixed IP, no existing EIP."""
    if any(isinstance(nic, dict) and nic.get("ip_address") for nic in body.get("nics") or []):
        return False
    publicip = body.get("publicip")
    return not (isinstance(publicip, dict) and publicip.get("id"))


def group_key(body: dict[str, Any]) -> tuple[str, str, int] | None:
    """``(base name, the body without name, index)`` for a server a count create could make,
    or None when it must be created on its own."""
    found = COUNT_NAME.match(str(body.get("name", "")))
    if found is None or not groupable(body):
        return None
    rest = {key: value for key, value in body.items() if key not in ("name", "count")}
    return found["base"], json.dumps(rest, sort_keys=True, default=str), int(found["index"])


def plan_groups(bodies: Sequence[dict[str, Any]], group_max: int) -> list[list[int]]:
    """The positions each create call would make, in batch order: runs of servers named
    ``base-0000``, ``base-0001``, ... with identical bodies, cut at ``group_max``; every other
    server alone."""
    if not 1 <= group_max <= API_MAX_COUNT:
        raise ValueError(f"group_max must be 1 to {API_MAX_COUNT}")
    calls: list[list[int]] = []
    run: list[int] = []
    run_key: tuple[str, str] | None = None
    for position, body in enumerate(bodies):
        key = group_key(body)
        follows = key is not None and run and (key[0], key[1]) == run_key
        if follows and key[2] == len(run):
            run.append(position)
            continue
        calls.extend(_chunks(run, group_max))
        run, run_key = [], None
        if key is not None and key[2] == 0:
            run, run_key = [position], (key[0], key[1])
        else:
            calls.append([position])
    calls.extend(_chunks(run, group_max))
    return calls


def _chunks(run: list[int], size: int) -> list[list[int]]:
    return [run[start : start + size] for start in range(0, len(run), size)]


@dataclass(frozen=True)
class CreateCalls:
    """How many create calls a batch costs: one per server today, and with grouping."""

    one_by_one: int
    grouped: int
    group_max: int


def count_create_calls(bodies: Sequence[dict[str, Any]], group_max: int) -> CreateCalls:
    """The create calls of ``bodies`` (each a server's create body), both ways."""
    return CreateCalls(
        one_by_one=len(bodies),
        grouped=len(plan_groups(bodies, group_max)),
        group_max=group_max,
    )
