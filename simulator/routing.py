"""The routing table: (method, path pattern) → handler and the API class it is counted under."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from simulator.wire import Request, Response

Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    api_class: str
    handler: Handler


class RouteTable:
    """Routes in registration order; the first match wins, so literal paths go first."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, api_class: str) -> Callable[[Handler], Handler]:
        """Decorator: ``{name}`` in ``template`` captures one path segment."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        pattern = re.compile(f"^{regex}/?$")

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, pattern, api_class, handler))
            return handler

        return register

    def match(self, request: Request) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            if route.method != request.method:
                continue
            found = route.pattern.match(request.path)
            if found:
                return route, found.groupdict()
        return None
