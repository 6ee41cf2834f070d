"""One call through the simulated gateway: route, authenticate, throttle, inject faults, run
the handler, and count what happened per API class."""

from __future__ import annotations

import threading
import time
from collections import Counter

from simulator import iam, introspect, nova, nova_tags, resources, v1
from simulator.auth import Authenticator, AuthFailure
from simulator.clock import SystemClock
from simulator.config import SimulatorConfig
from simulator.faults import DROP, HTTP_500, FaultInjector
from simulator.quota import API_CLASSES, QuotaBook, throttle_message
from simulator.routing import RouteTable
from simulator.state import CloudState
from simulator.wire import ApiError, DropConnection, Request, Response, gateway_error

#: Route tables in match order; ``/_sim/`` and IAM are outside quotas, faults and counters.
CLOUD_TABLES = (v1.routes, nova.routes, nova_tags.routes, resources.routes)


class CloudApp:
    """The simulator minus the socket: ``handle(request)`` answers one request."""

    def __init__(self, config: SimulatorConfig, clock: SystemClock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.faults = FaultInjector(config.faults, config.fail_create_codes)
        self.quotas = QuotaBook(config.quotas, self.clock)
        self.auth = Authenticator(config, self.clock)
        self.state = CloudState(config, self.clock, self.faults)
        self._counter_lock = threading.Lock()
        self.reset_counters()

    def reset_counters(self) -> None:
        with self._counter_lock:
            self.counters = {name: Counter() for name in API_CLASSES}

    def count(self, api_class: str, what: str) -> None:
        with self._counter_lock:
            self.counters[api_class][what] += 1

    def counters_view(self) -> dict[str, dict[str, int]]:
        keys = ("calls", "throttled", "faults", "errors")
        with self._counter_lock:
            return {name: {k: c[k] for k in keys} for name, c in self.counters.items()}

    def handle(self, request: Request) -> Response:
        """Answer ``request``; raises ``DropConnection`` when the socket must close silently."""
        if request.path.startswith("/_sim/"):
            return self._run(introspect.routes, request, self)
        if request.path.startswith("/v3/"):
            return self._run(iam.routes, request, self)
        return self._cloud_call(request)

    def _run(self, table: RouteTable, request: Request, context) -> Response:
        found = table.match(request)
        if found is None:
            return _no_route(request)
        route, params = found
        request.params = params
        try:
            return route.handler(context, request)
        except ApiError as error:
            return Response(error.status, error.body)

    def _cloud_call(self, request: Request) -> Response:
        found = next(filter(None, (table.match(request) for table in CLOUD_TABLES)), None)
        if found is None:
            return _no_route(request)
        route, params = found
        request.params = params
        api_class = route.api_class
        self.count(api_class, "calls")
        refused = self._gate(api_class, request)
        if refused is not None:
            return refused
        latency = self.faults.latency_seconds()
        if latency:
            time.sleep(latency)  # why: simulated network/backend latency, outside the state lock
        fault = self.faults.http_fault()
        if fault and fault != DROP:
            self.count(api_class, "faults")
            return _backend_fault(fault, request)
        response = self._run_locked(route.handler, params, request)
        if fault == DROP:
            # why: the call took effect but its answer is lost, as when a gateway times out.
            self.count(api_class, "faults")
            raise DropConnection
        if response.status >= 400:
            self.count(api_class, "errors")
        return response

    def _gate(self, api_class: str, request: Request) -> Response | None:
        """The gateway's checks, in its order: authentication, then the class's quota."""
        try:
            self.auth.check(request)
        except AuthFailure as failure:
            self.count(api_class, "errors")
            message = f"Incorrect IAM authentication information: {failure}"
            return gateway_error(401, "APIGW.0301", message, request.request_id)
        exceeded = self.quotas.admit(api_class)
        if exceeded is not None:
            self.count(api_class, "throttled")
            return gateway_error(429, "APIGW.0308", throttle_message(exceeded), request.request_id)
        return None

    def _run_locked(self, handler, params: dict, request: Request) -> Response:
        project = params.get("project")
        if project is not None and project != self.config.project_id:
            message = "The project in the URL is not the project of the credentials."
            return Response(400, {"error": {"code": "Common.0018", "message": message}})
        with self.state.lock:
            self.state.advance()
            try:
                return handler(self.state, request)
            except ApiError as error:
                return Response(error.status, error.body)


def _no_route(request: Request) -> Response:
    message = "The API does not exist or has not been published in the environment"
    return gateway_error(404, "APIGW.0101", message, request.request_id)


def _backend_fault(fault: str, request: Request) -> Response:
    if fault == HTTP_500:
        return gateway_error(
            500, "APIGW.0201", "Internal server error: the backend failed.", request.request_id
        )
    return gateway_error(
        503, "APIGW.0201", "Backend unavailable, please try again later.", request.request_id
    )
