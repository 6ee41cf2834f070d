"""Per-process resources of a worker: the database sessions, the limiter and the cloud client.

Built lazily, once per process (after the prefork pool forks, so no connection is shared
between processes), from the settings. Tests swap the whole runtime with :func:`use_runtime`.

A process given no cloud settings (the webhook workers: least privilege, they never call the
cloud) gets a :class:`NoCloudClient` that names what is missing on first use.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bms.auth import AkSkAuth, TokenAuth
from bms.client import BmsClient
from models.db import make_engine, make_session_factory
from worker.limiter import GlobalLimiter
from worker.metrics import MetricsRecorder, shared_recorder
from worker.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    limiter: GlobalLimiter
    client: BmsClient
    #: Counters for the API's /metrics; None: not counted.
    metrics: MetricsRecorder | None = None

    def warm_up(self) -> None:
        """Open a database and a Redis connection into their pools, so that the first task
        of this process does not pay for them: the first creates of a batch each wait for
        their pool child's connections otherwise, and the quota's first window spreads out."""
        with self.sessions() as session:
            session.execute(text("SELECT 1"))
        self.limiter.ping()


class CloudNotConfigured(RuntimeError):
    """The settings name no cloud endpoint, project or credentials."""


class NoCloudClient:
    """Stands for the cloud client in a process without cloud settings: any use raises."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getattr__(self, name: str):
        raise CloudNotConfigured(f"this process has no cloud client: {self.reason}")


def build_client(
    settings: Settings, limiter: GlobalLimiter | None, metrics: MetricsRecorder | None = None
) -> BmsClient:
    """The cloud client for the settings; every call first spends the limiter's quota, and is
    counted by API class and outcome when ``metrics`` is given."""
    if not settings.endpoint or not settings.project_id:
        raise CloudNotConfigured("BMS_ENDPOINT and BMS_PROJECT_ID must be set to reach a cloud")
    return BmsClient(
        settings.endpoint,
        settings.project_id,
        _auth(settings),
        ecs_endpoint=settings.ecs_endpoint,
        ims_endpoint=settings.ims_endpoint,
        vpc_endpoint=settings.vpc_endpoint,
        evs_endpoint=settings.evs_endpoint,
        before_call=limiter.acquire if limiter else None,
        on_response=metrics.call if metrics else None,
    )


def _auth(settings: Settings):
    if settings.ak is not None and settings.sk is not None:
        return AkSkAuth(
            settings.ak.get_secret_value(), settings.sk.get_secret_value(), settings.project_id
        )
    if settings.iam_user is not None:
        return TokenAuth(
            settings.iam_endpoint or settings.endpoint,
            settings.iam_user.get_secret_value(),
            settings.iam_password.get_secret_value(),
            settings.iam_domain.get_secret_value(),
            settings.project_id,
        )
    raise CloudNotConfigured("no cloud credentials: set BMS_AK and BMS_SK, or the BMS_IAM_* trio")


def build_runtime(settings: Settings) -> Runtime:
    metrics = shared_recorder(settings.redis_url)
    limiter = GlobalLimiter(settings.redis_url, settings.rate_limit_items, metrics=metrics)
    try:
        client = build_client(settings, limiter, metrics)
    except CloudNotConfigured as exc:
        client = NoCloudClient(str(exc))
    return Runtime(
        settings=settings,
        # No pre-ping: it doubled the transactions of a step on PostgreSQL. A connection found
        # dead fails one task and is replaced; the chain is rebuilt by the reconciler.
        sessions=make_session_factory(make_engine(settings.database_url, pool_pre_ping=False)),
        limiter=limiter,
        client=client,
        metrics=metrics,
    )


_override: Runtime | None = None
log = logging.getLogger("bms.worker.runtime")


@functools.cache
def _process_runtime() -> Runtime:
    return build_runtime(get_settings())


def runtime() -> Runtime:
    """This process's runtime (built on first use)."""
    return _override if _override is not None else _process_runtime()


def use_runtime(replacement: Runtime | None) -> None:
    """Make every task of this process use ``replacement`` (``None``: back to the settings)."""
    global _override
    _override = replacement


@worker_process_init.connect
def _warm_up_in_background(**_kwargs) -> None:
    """A pool child opens its connections while it waits for its first task. In a thread: a
    database that is slow to answer must not hold the child's start (Celery gives a child a
    few seconds to report alive, then replaces it)."""
    process_runtime = runtime()  # built here, once: no I/O, and no race with the first task
    threading.Thread(
        target=_warm_up, args=(process_runtime,), name="bms-warm-up", daemon=True
    ).start()


def _warm_up(process_runtime: Runtime) -> None:
    try:
        process_runtime.warm_up()
    except Exception as exc:  # noqa: BLE001 - the first task opens its own and reports it
        log.info("warm-up of this worker process failed (%s): its first task connects", exc)
