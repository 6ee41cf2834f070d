"""The application factory: settings and a session factory in, a FastAPI app out.

Importing this module imports the Celery app (``worker.app``), which reads ``BMS_REDIS_URL``:
a submission or a retry sends its chain through that broker.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.orm import Session, sessionmaker

from api import (
    batches,
    dead_letters,
    errors,
    health,
    metrics,
    openapi,
    server_requests,
    ui,
    webhooks,
)
from api.auth import require_token
from api.edge import Edge
from api.schemas import Problem
from models.db import make_engine, make_session_factory
from worker.app import TASK_MODULES
from worker.app import app as celery_app
from worker.settings import Settings

DESCRIPTION = """
Submit batches of bare metal servers to provision, follow them, cancel and retry them.

Every route but `/healthz` and these docs needs `Authorization: Bearer <BMS_API_TOKEN>` when
the token is set (or the dashboard's session cookie, with `X-BMS-CSRF` to change anything).
Every 422 answers `{"detail": [{"field", "message"}]}`, naming each bad field.

Prometheus metrics are at `/metrics`; the dashboard is at `/ui`.
"""

#: Where the API serves Swagger UI and ReDoc themselves (no CDN), as open as /docs.
DOCS_ASSETS = "/static-offline-docs"
DOCS_URL, REDOC_URL = "/docs", "/redoc"


def register_tasks() -> None:
    """Import every task module, so that the chains this process sends use the tasks' options.

    A signature of a task unknown to the process is sent as a bare ``send_task`` that expects a
    result: the process then subscribes to a result channel per message (growing without end in
    a long-lived API) and, with the broker down, its result consumer breaks for good.
    """
    for module in TASK_MODULES:
        importlib.import_module(module)


def warm_up_sending() -> None:
    """Make at start what the first submission's ``bms.start_batch`` would make in its answer's
    time: the Celery app finalized, the task's result backend and the producer pool (40-100
    ms of a first ``POST /v1/batches``, profiled). No connection is opened: with the broker
    down the API starts all the same, and a submission stays stored (``tasks.intake.submit``).
    """
    celery_app.finalize(auto=True)
    celery_app.tasks["bms.start_batch"].backend  # noqa: B018 - made on first access
    celery_app.producer_pool  # noqa: B018 - made on first access


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """Build the API. Without ``sessions``, an engine is made from ``settings.database_url``
    and disposed of when the app shuts down."""
    register_tasks()
    warm_up_sending()
    engine = None
    if sessions is None:
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if engine is not None:
            engine.dispose()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this app, not from a CDN.
    app = FastAPIOffline(
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
        static_url=DOCS_ASSETS,
        title="bms-orchestrator",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.collector = metrics.OrchestratorCollector(settings, sessions)
    app.state.collector.add_sql_families(webhooks.metric_families)
    app.state.metrics = metrics.make_registry(app.state.collector)
    errors.install(app)
    app.include_router(health.router)
    protected = [Depends(require_token)]
    unauthorized = {401: {"model": Problem, "description": "No token, or not BMS_API_TOKEN."}}
    routers = (batches, server_requests, webhooks, metrics, dead_letters)
    for router in (module.router for module in routers):
        app.include_router(router, dependencies=protected, responses=unauthorized)
    # The dashboard: its own auth (the token, or the session cookie made from it).
    app.include_router(ui.router)
    app.include_router(ui.pages)
    app.add_exception_handler(ui.LoginRequired, ui.login_required)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    openapi.install(app)
    # FastAPIOffline serves the docs itself, so app.docs_url and app.redoc_url are None.
    open_paths = {"/healthz", DOCS_URL, REDOC_URL, app.openapi_url}
    open_paths.add(app.swagger_ui_oauth2_redirect_url)
    # /ui answers for itself: a page without the session sends the browser to its login. The
    # docs' own scripts and styles are public, as the docs page is.
    open_prefixes = ("/ui/", "/ui", f"{DOCS_ASSETS}/")
    app.add_middleware(
        Edge, settings=settings, open_paths=open_paths - {None}, open_prefixes=open_prefixes
    )
    return app
