"""Error answers: one shape for every 422, and a 503 when the broker cannot be reached.

Every 422 is ``{"detail": [{"field": ..., "message": ...}]}``: a batch the spec refuses and a
request FastAPI cannot parse (not JSON, a malformed UUID, a ``limit`` out of range) answer
alike, each bad field named by its path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnreachable
from starlette.exceptions import HTTPException

from models.bounds import MAX_DEPTH
from models.spec import field_path

log = logging.getLogger("bms.api")

#: The answer when a change was committed but its chain could not be sent.
BROKER_DOWN = (
    "the broker (Redis) is unreachable: the change is stored and its chain will be started by "
    "the reconciler once the broker is back; a resubmission with the same Idempotency-Key "
    "returns the stored batch"
)


class InvalidFields(Exception):
    """A request refused field by field: ``errors`` holds ``(field path, message)`` pairs."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = list(errors)


def _response(errors: Sequence[tuple[str, str]]) -> JSONResponse:
    detail = [{"field": field, "message": message} for field, message in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def describe(error: dict[str, Any]) -> tuple[str, str]:
    """A FastAPI validation error as ``(field, message)``; ``body`` names the body itself."""
    location = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        # The location's second part is a character offset, not a field.
        reason = error.get("ctx", {}).get("error") or "does not parse"
        offset = location[1] if len(location) > 1 else "?"
        return "body", f"not valid JSON: {reason} (at character {offset})"
    if location == ("body",) and error.get("type") == "dict_type":
        # Also what a body sent without ``Content-Type: application/json`` comes to.
        return "body", "must be a JSON object (sent as Content-Type: application/json)"
    if len(location) > 1:
        return field_path(location[1:]), message
    return str(location[0]) if location else "<request>", message


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return _response([describe(error) for error in exc.errors()])


async def _invalid_fields(_request: Request, exc: InvalidFields) -> JSONResponse:
    return _response(exc.errors)


async def _broker_unreachable(_request: Request, exc: BrokerUnreachable) -> JSONResponse:
    # Chains are sent after the commit: what was asked for is stored, only its start waits.
    log.warning("broker unreachable, chains left to the reconciler: %s", exc)
    return JSONResponse({"detail": BROKER_DOWN}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # FastAPI answers a bare 400 when its body parsing fails for another reason than bad JSON
    # syntax: bytes that are not UTF-8, or a JSON nested beyond what its parser takes (about
    # 1,000 levels). Both are a bad body: a 422 naming it, like every other one.
    if exc.status_code == 400 and exc.__cause__ is not None:
        if isinstance(exc.__cause__, RecursionError):
            return _response([("body", f"nested deeper than {MAX_DEPTH} levels")])
        if isinstance(exc.__cause__, UnicodeDecodeError):
            return _response([("body", "not valid JSON: the bytes are not UTF-8")])
        return _response([("body", f"does not parse: {type(exc.__cause__).__name__}")])
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidFields, _invalid_fields)
    app.add_exception_handler(BrokerUnreachable, _broker_unreachable)
