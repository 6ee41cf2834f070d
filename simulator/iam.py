"""IAM: ``POST /v3/auth/tokens`` issues a project-scoped token (never throttled)."""

from __future__ import annotations

from simulator.routing import RouteTable
from simulator.wire import Request, Response

routes = RouteTable()


@routes.add("POST", "/v3/auth/tokens", "iam")
def issue_token(app, request: Request) -> Response:
    return app.auth.issue_token(request)
