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

from api import batches, errors, health, metrics, openapi, server_requests, ui, webhooks
from api.auth import require_token
from models.db import make_engine, make_session_factory
from worker.app import TASK_MODULES
from worker.settings import Settings

DESCRIPTION = """
Submit batches of bare metal servers to provision, follow them, cancel and retry them.

Every route but `/healthz` and these docs needs `Authorization: Bearer <BMS_API_TOKEN>` when
the token is set (or the dashboard's session cookie, with `X-BMS-CSRF` to change anything).
Every 422 answers `{"detail": [{"field", "message"}]}`, naming each bad field.

Prometheus metrics are at `/metrics`; the dashboard is at `/ui`.
"""


def register_tasks() -> None:
    """Import every task module, so that the chains this process sends use the tasks' options.

    A signature of a task unknown to the process is sent as a bare ``send_task`` that expects a
    result: the process then subscribes to a result channel per message (growing without end in
    a long-lived API) and, with the broker down, its result consumer breaks for good.
    """
    for module in TASK_MODULES:
        importlib.import_module(module)


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """Build the API. Without ``sessions``, an engine is made from ``settings.database_url``
    and disposed of when the app shuts down."""
    register_tasks()
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
    app.include_router(batches.router, dependencies=protected)
    app.include_router(server_requests.router, dependencies=protected)
    app.include_router(webhooks.router, dependencies=protected)
    app.include_router(metrics.router, dependencies=protected)
    # The dashboard: its own auth (the token, or the session cookie made from it).
    app.include_router(ui.router)
    app.include_router(ui.pages)
    app.add_exception_handler(ui.LoginRequired, ui.login_required)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    openapi.install(app)
    return app
