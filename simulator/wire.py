"""The request and response objects handlers see, and the error bodies of each API family."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl


def new_request_id() -> str:
    return secrets.token_hex(16)


@dataclass
class Request:
    """One parsed HTTP request, plus the route's captured path parameters."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    params: dict[str, str] = field(default_factory=dict)
    client_address: str = "127.0.0.1"

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the last value wins for a repeated key."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> dict:
        """The JSON body as a dict; malformed or non-object bodies raise ``ApiError`` 400."""
        if not self.body:
            return {}
        try:
            document = json.loads(self.body)
        except ValueError:
            raise ApiError(400, bms_body("BMS.0001", "Failed to parse the request body.")) from None
        if not isinstance(document, dict):
            raise ApiError(400, bms_body("BMS.0001", "The request body must be a JSON object."))
        return document


@dataclass
class Response:
    status: int
    body: dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """Raised by handlers to answer with an error status and body."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class DropConnection(Exception):
    """Close the socket without writing an answer."""


def bms_body(code: str, message: str) -> dict:
    """A BMS v1 service error: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}


def bms_error(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, bms_body(code, message))


def gateway_error(status: int, code: str, message: str, request_id: str) -> Response:
    """An API gateway error (auth, routing, throttling, backend faults)."""
    body = {"error_msg": message, "error_code": code, "request_id": request_id}
    return Response(status, body)


#: Nova's fault names per status, as upstream Nova renders them.
NOVA_FAULTS = {
    400: "badRequest",
    403: "forbidden",
    404: "itemNotFound",
    409: "conflictingRequest",
    500: "computeFault",
}


def nova_error(status: int, message: str) -> ApiError:
    return ApiError(status, {NOVA_FAULTS[status]: {"code": status, "message": message}})
