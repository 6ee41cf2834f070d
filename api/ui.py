"""The dashboard at ``/ui``: server-rendered pages (Jinja2) with live regions refreshed by a
small script of our own (``/ui/static/ui.js``, plain ``fetch``; nothing from a CDN).

Pages: the batches (``/ui``), one batch (``/ui/batches/{id}``), one request
(``/ui/requests/{id}``). Each live region is a fragment route rendered by the same template
part as the page. The buttons (cancel, retry, teardown) call the REST routes
with the session cookie and the CSRF header. Auth is the API's token: a bearer header, or the
cookie that ``/ui/login`` sets from it.
"""

from __future__ import annotations

import hmac
import uuid
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

import redis
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api import dashboard, webhooks
from api.deps import AppSettings, Sessions
from api.queries import request_detail
from api.session import COOKIE, CSRF_HEADER, cookie_ok, csrf_value, session_value
from models.db import session_scope
from models.states import RequestState
from worker import metrics as metric_keys

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(age=dashboard.age, until=dashboard.until)

#: Largest login form read; the token is at most a few hundred bytes.
MAX_FORM_BYTES = 4096


class LoginRequired(Exception):
    """A page asked for without a valid session: go to the login form, then come back."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def _token(settings) -> str:
    return settings.api_token.get_secret_value() if settings.api_token else ""


def authorized(request: Request, settings: AppSettings) -> None:
    """Pages and fragments: the bearer token or the session cookie (nothing without a token)."""
    token = _token(settings)
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode()):
        return
    if cookie_ok(request, token):
        return
    if request.headers.get("X-BMS-Fragment"):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the dashboard session ended")
    raise LoginRequired(request.url.path)


Authorized = Depends(authorized)
router = APIRouter(prefix="/ui", include_in_schema=False)
pages = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Authorized])


def _render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    token = _token(request.app.state.settings)
    context.setdefault("csrf", csrf_value(token) if token else "")
    context.setdefault("csrf_header", CSRF_HEADER)
    context.setdefault("logged_in", bool(token))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# -- login -------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Only a path of the dashboard: never an absolute URL (no open redirect)."""
    if value and value.startswith("/ui") and not value.startswith("//"):
        return value
    return "/ui"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002
    return _render(request, "login.html", next=_safe_next(next), error=None, logged_in=False)


@router.post("/login")
async def login(request: Request, settings: AppSettings) -> Response:
    body = await request.body()
    form = parse_qs(body[:MAX_FORM_BYTES].decode(errors="replace"))
    given = (form.get("token") or [""])[0]
    next_path = _safe_next((form.get("next") or [""])[0])
    token = _token(settings)
    if token and not hmac.compare_digest(given.encode(), token.encode()):
        return _render(
            request,
            "login.html",
            status_code=status.HTTP_401_UNAUTHORIZED,
            next=next_path,
            error="That is not the API's token.",
            logged_in=False,
        )
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    if token:
        response.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


async def login_required(request: Request, exc: LoginRequired) -> Response:
    target = f"/ui/login?next={quote(exc.next_path, safe='/')}"
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)


# -- batches -----------------------------------------------------------------------------------


def _batches_context(sessions, offset: int) -> dict:
    with session_scope(sessions) as session:
        rows, total = dashboard.batch_rows(session, dashboard.BATCHES_PER_PAGE, offset)
    return {
        "rows": rows,
        "total": total,
        "offset": offset,
        "limit": dashboard.BATCHES_PER_PAGE,
    }


Offset = Annotated[int, Query(ge=0, le=10_000_000)]


@pages.get("", response_class=HTMLResponse)
def batches_page(request: Request, sessions: Sessions, offset: Offset = 0) -> HTMLResponse:
    context = _batches_context(sessions, offset)
    return _render(request, "batches.html", quota=_quota(request), **context)


@pages.get("/fragments/batches", response_class=HTMLResponse)
def batches_fragment(request: Request, sessions: Sessions, offset: Offset = 0) -> HTMLResponse:
    return _render(request, "_batch_rows.html", **_batches_context(sessions, offset))


@pages.get("/fragments/quota", response_class=HTMLResponse)
def quota_fragment(request: Request) -> HTMLResponse:
    return _render(request, "_quota.html", quota=_quota(request))


def _quota(request: Request) -> dict:
    """Each API class now: calls in the window, quota, pause, and the 429s counted so far."""
    collector = request.app.state.collector
    limiter, client = collector.limiter, collector.redis
    if limiter is None or client is None:
        return {"error": "no Redis configured", "classes": []}
    try:
        usage = limiter.usage()
        calls = {k.decode(): int(v) for k, v in client.hgetall(metric_keys.CALLS).items()}
    except redis.RedisError as exc:
        return {"error": f"Redis did not answer: {type(exc).__name__}", "classes": []}
    classes = [
        {
            "name": name,
            "used": u.used,
            "limit": u.limit,
            "window": u.window_seconds,
            "percent": min(u.used * 100 / u.limit, 100) if u.limit else 0,
            "paused": u.paused_seconds,
            "throttled": calls.get(f"{name}|throttled", 0),
            "calls": sum(calls.get(f"{name}|{o}", 0) for o in metric_keys.OUTCOMES),
        }
        for name, u in usage.items()
    ]
    return {"error": None, "classes": classes}


# -- one batch ---------------------------------------------------------------------------------


def _batch_context(sessions, batch_id: uuid.UUID) -> dict:
    with session_scope(sessions) as session:
        view = dashboard.batch_view(session, batch_id)
        if view is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"batch {batch_id} not found")
        hooks = webhooks.webhook_page(session, batch_id, limit=20, offset=0)
    return {"batch": view, "hooks": hooks}


def _requests_context(sessions, batch_id, offset: int, state: RequestState | None) -> dict:
    with session_scope(sessions) as session:
        lines = dashboard.request_lines(session, batch_id, offset, state)
    return {
        "batch_id": batch_id,
        "lines": lines,
        "offset": offset,
        "state": state,
        "limit": dashboard.REQUESTS_PER_PAGE,
    }


StateFilter = Annotated[RequestState | None, Query()]


@pages.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(
    request: Request,
    batch_id: uuid.UUID,
    sessions: Sessions,
    offset: Offset = 0,
    state: StateFilter = None,
) -> HTMLResponse:
    context = _batch_context(sessions, batch_id)
    listing = _requests_context(sessions, batch_id, offset, state)
    return _render(
        request,
        "batch.html",
        states=list(RequestState),
        **context,
        **listing,
    )


@pages.get("/batches/{batch_id}/live", response_class=HTMLResponse)
def batch_live(request: Request, batch_id: uuid.UUID, sessions: Sessions) -> HTMLResponse:
    return _render(request, "_batch_live.html", **_batch_context(sessions, batch_id))


@pages.get("/batches/{batch_id}/requests", response_class=HTMLResponse)
def batch_requests(
    request: Request,
    batch_id: uuid.UUID,
    sessions: Sessions,
    offset: Offset = 0,
    state: StateFilter = None,
) -> HTMLResponse:
    listing = _requests_context(sessions, batch_id, offset, state)
    return _render(request, "_requests.html", **listing)


# -- one request -------------------------------------------------------------------------------


@pages.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: uuid.UUID, sessions: Sessions) -> HTMLResponse:
    with session_scope(sessions) as session:
        detail = request_detail(session, request_id)
        if detail is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")
        jobs = dashboard.cloud_jobs(session, request_id)
        deliveries = webhooks.deliveries(session, detail.batch_id, 20, 0, request_id=request_id)
    return _render(request, "request.html", req=detail, jobs=jobs, deliveries=deliveries)
