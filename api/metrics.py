"""``GET /metrics``: the orchestrator in Prometheus's text format, read fresh at each scrape.

One collector builds every family when scraped: requests and webhook deliveries by state from
SQL (the source of truth, so the numbers match the database), and the workers' counters from
the Redis hashes of ``worker/metrics.py`` (calls, limiter waits, step durations, reconciler
restarts), the limiter's windows (quota use now) and the broker's queue lengths. Redis being
down leaves the SQL families and says so in ``bms_redis_up``; a scrape never fails for it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.db import session_scope
from models.records import Batch, ServerRequest
from models.states import RequestState
from worker import metrics as keys
from worker.limiter import GlobalLimiter
from worker.queues import ALL_QUEUES
from worker.settings import API_CLASSES, Settings

log = logging.getLogger("bms.api.metrics")

router = APIRouter(tags=["metrics"])

#: Celery's Redis transport keeps messages a worker reserved (countdowns included) here.
UNACKED_KEY = "unacked"


class OrchestratorCollector:
    """A custom collector: nothing is kept in the API process, every scrape reads anew."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self.redis = None
        self.limiter = None
        if settings.redis_url:
            self.redis = redis.Redis.from_url(
                settings.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            self.limiter = GlobalLimiter(settings.redis_url, settings.rate_limit_items)
        self._extra_sql = []

    def add_sql_families(self, build) -> None:
        """``build(session)`` yields more families read from SQL (webhook deliveries)."""
        self._extra_sql.append(build)

    def collect(self):
        yield from self._sql_families()
        up = GaugeMetricFamily("bms_redis_up", "1 when Redis answered this scrape.")
        try:
            families = list(self._redis_families()) if self.redis is not None else []
            up.add_metric([], 1 if self.redis is not None else 0)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unreachable: %s", exc)
            families = []
            up.add_metric([], 0)
        yield up
        yield from families

    # -- SQL ------------------------------------------------------------------------------

    def _sql_families(self):
        requests = GaugeMetricFamily(
            "bms_requests", "Server requests by state, from the database.", labels=["state"]
        )
        with session_scope(self._sessions) as session:
            counts = dict.fromkeys(RequestState, 0)
            rows = session.execute(
                select(ServerRequest.state, func.count()).group_by(ServerRequest.state)
            )
            for state, number in rows:
                counts[state] = number
            batches = session.scalar(select(func.count()).select_from(Batch)) or 0
            extra = [family for build in self._extra_sql for family in build(session)]
        for state, number in counts.items():
            requests.add_metric([state.value], number)
        yield requests
        yield _gauge("bms_batches", "Batches in the database.", batches)
        yield from extra

    # -- Redis ----------------------------------------------------------------------------

    def _redis_families(self):
        pipe = self.redis.pipeline(transaction=False)
        for key in (
            keys.CALLS,
            keys.LIMITER_WAITS,
            keys.LIMITER_WAIT_SECONDS,
            keys.STEPS,
            keys.RECONCILER,
            keys.WEBHOOKS,
        ):
            pipe.hgetall(key)
        for queue in ALL_QUEUES:
            pipe.llen(queue)
        pipe.hlen(UNACKED_KEY)
        answers = pipe.execute()
        calls, waits, wait_seconds, steps, reconciler, webhooks = (_decoded(a) for a in answers[:6])
        depths, reserved = answers[6:-1], answers[-1]

        yield _calls(calls)
        yield _per_class(
            "bms_limiter_waits",
            "Calls the global limiter held back (re-scheduled for when a slot frees).",
            waits,
            CounterMetricFamily,
        )
        yield _per_class(
            "bms_limiter_wait_seconds",
            "Seconds the held-back calls were told to wait, summed.",
            wait_seconds,
            CounterMetricFamily,
        )
        yield _steps(steps)
        restarts = CounterMetricFamily(
            "bms_reconciler_restarts", "Chains the reconciler restarted (stalled requests)."
        )
        restarts.add_metric([], float(reconciler.get("restarts", 0)))
        yield restarts
        runs = CounterMetricFamily("bms_reconciler_runs", "Runs of the reconciler.")
        runs.add_metric([], float(reconciler.get("runs", 0)))
        yield runs
        attempts = CounterMetricFamily(
            "bms_webhook_attempts", "Webhook POSTs by outcome.", labels=["outcome"]
        )
        for outcome in ("delivered", "failed"):
            attempts.add_metric([outcome], float(webhooks.get(outcome, 0)))
        yield attempts
        depth = GaugeMetricFamily(
            "bms_queue_depth", "Messages waiting in each queue of the broker.", labels=["queue"]
        )
        for queue, length in zip(ALL_QUEUES, depths, strict=True):
            depth.add_metric([queue], length)
        yield depth
        yield _gauge(
            "bms_queue_reserved",
            "Messages reserved by workers and not yet acknowledged (countdowns included).",
            reserved,
        )
        yield from self._quota_families()

    def _quota_families(self):
        used = GaugeMetricFamily(
            "bms_quota_used", "Calls in the current window of each API class.", labels=["api_class"]
        )
        limit = GaugeMetricFamily(
            "bms_quota_limit", "The quota of each API class.", labels=["api_class"]
        )
        paused = GaugeMetricFamily(
            "bms_quota_paused_seconds",
            "Seconds left of the pause after the cloud's 429, per API class.",
            labels=["api_class"],
        )
        for api_class, usage in self.limiter.usage().items():
            used.add_metric([api_class], usage.used)
            limit.add_metric([api_class], usage.limit)
            paused.add_metric([api_class], usage.paused_seconds)
        yield from (used, limit, paused)


def _decoded(raw: dict) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _per_class(name, documentation, values: dict[str, str], kind):
    family = kind(name, documentation, labels=["api_class"])
    for api_class in API_CLASSES:
        family.add_metric([api_class], float(values.get(api_class, 0)))
    return family


def _calls(values: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "bms_cloud_calls",
        "HTTP calls to the cloud by API class and outcome (ok, throttled = 429, error).",
        labels=["api_class", "outcome"],
    )
    for api_class in API_CLASSES:
        for outcome in keys.OUTCOMES:
            family.add_metric([api_class, outcome], float(values.get(f"{api_class}|{outcome}", 0)))
    return family


def _steps(values: dict[str, str]) -> HistogramMetricFamily:
    """Buckets are stored one by one; Prometheus wants them cumulative."""
    family = HistogramMetricFamily(
        "bms_step_duration_seconds",
        "Run time of each task execution, by task and Celery outcome (success, retry, ...).",
        labels=["task", "outcome"],
    )
    series: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for field, value in values.items():
        task, outcome, part = field.rsplit("|", 2)
        series[(task, outcome)][part] = float(value)
    bounds = [*(str(b) for b in keys.STEP_BUCKETS), "+Inf"]
    for (task, outcome), parts in sorted(series.items()):
        running, buckets = 0.0, []
        for index, bound in enumerate(bounds):
            running += parts.get(str(index), 0.0)
            buckets.append((bound, running))
        family.add_metric([task, outcome], buckets, parts.get("sum", 0.0))
    return family


def make_registry(collector: OrchestratorCollector) -> CollectorRegistry:
    """A registry of the app's own (never the process-global one: one app, one registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format 0.0.4."}},
)
def metrics(request: Request) -> Response:
    """Requests by state, cloud calls by class and outcome, limiter waits, step durations,
    reconciler restarts, queue depths, quota use and webhook deliveries (see the README)."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
