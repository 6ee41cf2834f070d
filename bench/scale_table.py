"""Issue 11's table: its rows, each run's value, the goal beside them, and whether it holds.

Only the bookkeeping: which rows there are, which measurement (a *group*: one run of a stack
gives several rows) fills each, picking rows by name, and the table printed and written to
``bench/RESULTS.md``. :mod:`bench.bench_scale` does the measuring. Kept free of the
measuring's imports, so that its unit test runs without a stack.

A goal holds when *every* run meets it (the worst run decides: "three runs, min/median/max"
in the issue means the max of an upper bound, the min of a lower one). A row without a goal is
shown for what it is (issue 11: "keep both bounded" has no number).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Goal:
    """An upper bound (``at_most``) or a lower one on a figure."""

    limit: float
    at_most: bool = True

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


@dataclass(frozen=True)
class RowSpec:
    key: str
    figure: str
    #: The measurement that gives it (see :data:`GROUPS`).
    group: str
    goal: Goal | None
    goal_text: str
    #: How a value is shown: ``s`` (seconds, shown in ms below 1 s), ``x`` (a ratio), ``%``
    #: (a share), ``n`` (a count, one decimal), ``n2`` (two), ``int``, ``MiB`` (bytes).
    unit: str


#: Every measurement, in the order they run, with what one run of it takes (for ``--help``).
GROUPS: dict[str, str] = {
    "intake": "POSTs and reads with a 10,000 batch running, then finished, then a 100k DB "
    "(about 4 min a run)",
    "share": "bench_limiter: 500 servers at create=20/s (about 1 min a run)",
    "volumes": "bench_limiter --volumes 2: 500 servers at create=20/s (about 1 min a run)",
    "faults": "bench_limiter --volumes 2 --faults real: 500 servers (about 1.5 min a run)",
    "count_volumes": "bench_count --volumes 2 --window 10: 500 servers, 2-5 s jobs, real quota "
    "ratios (about 2 min a run)",
    "waiting": "bench_limiter --stop-after 200: 10,000 queued at create=50/min (about 4 min a run)",
    # Last: the longest, so that an interrupted bench has every other row.
    "makespan": "bench_limiter: --makespan-servers (10,000) at create=500/s (about 15 min a "
    "run today)",
}

ROWS: tuple[RowSpec, ...] = (
    RowSpec("post_1k", "`POST /v1/batches`, 1,000 servers", "intake", Goal(0.3), "≤ 0.3 s", "s"),
    RowSpec("post_10k", "`POST /v1/batches`, 10,000 servers", "intake", Goal(2.0), "≤ 2 s", "s"),
    RowSpec(
        "get_running",
        "`GET /v1/batches/{id}` while a 10,000 batch runs",
        "intake",
        Goal(0.1),
        "≤ 100 ms",
        "s",
    ),
    RowSpec(
        "cpu_per_server",
        "worker CPU per provisioned server (no volumes)",
        "share",
        Goal(0.015),
        "≤ 15 ms",
        "s",
    ),
    RowSpec(
        "statements_per_server",
        "SQL statements per server, no volumes",
        "share",
        Goal(15),
        "≤ 15",
        "n",
    ),
    RowSpec(
        "statements_per_server_2v",
        "SQL statements per server, 2 volumes",
        "volumes",
        Goal(25),
        "≤ 25",
        "n",
    ),
    RowSpec(
        "task_runs_faults",
        "task runs per server with 2 volumes, real faults",
        "faults",
        Goal(8),
        "≤ 8",
        "n",
    ),
    RowSpec(
        "makespan",
        "makespan of 10,000 servers, create quota 500/s (× the quota's bound)",
        "makespan",
        Goal(2.0),
        "≤ 2 ×",
        "x",
    ),
    RowSpec(
        "makespan_volumes",
        "makespan of 500 servers with 2 volumes each, real quota ratios (× the lower bound)",
        "count_volumes",
        Goal(1.05),
        "≤ 1.05 ×",
        "x",
    ),
    RowSpec(
        "waiting_runs",
        "real quotas (create 50/min), 10,000 queued: create task runs per create admitted",
        "waiting",
        Goal(1.2),
        "≤ 1.2",
        "n2",
    ),
    RowSpec(
        "waiting_uss",
        "… pool children USS, all of them, max over the run",
        "waiting",
        None,
        "bounded",
        "MiB",
    ),
    RowSpec(
        "waiting_unacked",
        "… messages held by workers (Redis `unacked`), max over the run",
        "waiting",
        None,
        "bounded",
        "int",
    ),
    RowSpec(
        "create_share",
        "create throughput as a share of the fastest the quota allows (create=20/s, 500)",
        "share",
        Goal(0.98, at_most=False),
        "≥ 98%",
        "%",
    ),
    RowSpec("create_429", "… throttled creates (429)", "share", Goal(0), "0", "int"),
    RowSpec(
        "get_finished",
        "`GET /v1/batches/{id}` of a finished 10,000 batch, no load (first page)",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
    RowSpec(
        "get_finished_deep",
        "… its last page (`cursor` after position 9,899)",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
    RowSpec(
        "big_post_1k", "100k-request DB: `POST`, 1,000 servers", "intake", Goal(0.3), "≤ 0.3 s", "s"
    ),
    RowSpec(
        "big_post_10k", "100k-request DB: `POST`, 10,000 servers", "intake", Goal(2.0), "≤ 2 s", "s"
    ),
    RowSpec(
        "big_list",
        "100k-request DB: `GET /v1/batches` (50 a page)",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
    RowSpec(
        "big_summary",
        "100k-request DB: `GET /v1/batches/{id}` (10,000 batch, first page)",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
    RowSpec(
        "big_reconciler",
        "100k-request DB: the reconciler's query",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
    RowSpec(
        "big_batch_reconciler",
        "100k-request DB: the batch reconciler's query",
        "intake",
        Goal(0.05),
        "≤ 50 ms",
        "s",
    ),
)


@dataclass
class Row:
    """A row's figures: one value per run (a read's median of its samples), the worst sample
    of each run for reads, and why a run gave none."""

    spec: RowSpec
    values: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)
    #: Why it was not measured (a missing option, a run that failed); shown in its row.
    missing: list[str] = field(default_factory=list)

    def add(self, value: float | tuple[float, float]) -> None:
        if isinstance(value, tuple):
            self.values.append(value[0])
            self.worst.append(value[1])
        else:
            self.values.append(value)


def select_rows(names: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[RowSpec]:
    """The rows named (row keys or group names; all without ``names``) minus those skipped,
    in the table's order. :class:`ValueError` names an unknown one."""
    known = {spec.key for spec in ROWS} | set(GROUPS)
    names = list(names) if names is not None else None
    unknown = [name for name in [*(names or []), *skip] if name not in known]
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(sorted(known))}")

    def named(spec: RowSpec, among: Iterable[str]) -> bool:
        among = set(among)
        return spec.key in among or spec.group in among

    return [
        spec for spec in ROWS if (names is None or named(spec, names)) and not named(spec, skip)
    ]


def groups_of(specs: Sequence[RowSpec]) -> list[str]:
    """The measurements the rows need, in :data:`GROUPS`' order."""
    wanted = {spec.group for spec in specs}
    return [group for group in GROUPS if group in wanted]


def show(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f} ×"
    if unit == "%":
        return f"{value:.1%}"
    if unit == "MiB":
        return f"{value / 2**20:.0f} MiB"
    if unit == "int":
        return f"{value:.0f}"
    if unit == "n2":
        return f"{value:.2f}"
    return f"{value:.1f}"


def verdict(row: Row, runs: int) -> str:
    """``**met**``, ``not met``, ``—`` (no goal) or ``not measured``; ``(k of n runs)`` when
    some runs gave no value."""
    if not row.values:
        return "not measured"
    goal = row.spec.goal
    if goal is None:
        text = "—"
    else:
        text = "**met**" if all(goal.met(value) for value in row.values) else "not met"
    if len(row.values) < runs:
        text += f" ({len(row.values)} of {runs} runs)"
    return text


def line(row: Row, runs: int) -> str:
    """``| figure | runs (min / median / max) | goal | met? |``."""
    spec = row.spec
    if row.values:
        unit = spec.unit
        each = " · ".join(show(value, unit) for value in row.values)
        low, mid, high = min(row.values), statistics.median(row.values), max(row.values)
        measured = f"{each} ({show(low, unit)} / {show(mid, unit)} / {show(high, unit)})"
        if row.worst:
            measured += f", worst sample {show(max(row.worst), unit)}"
        if row.missing:
            measured += "; " + "; ".join(row.missing)
    else:
        measured = "; ".join(dict.fromkeys(row.missing)) or "not measured"
    return f"| {spec.figure} | {measured} | {spec.goal_text} | {verdict(row, runs)} |"


def table(rows: Sequence[Row], runs: int) -> list[str]:
    return [
        "| figure | runs (min / median / max) | goal | met? |",
        "|---|---|---|---|",
        *(line(row, runs) for row in rows),
    ]
