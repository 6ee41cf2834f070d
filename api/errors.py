"""One shape for every 422: ``{"detail": [{"field": ..., "message": ...}]}``.

A batch the spec refuses and a request FastAPI cannot parse (not JSON, a malformed UUID, a
``limit`` out of range) answer alike, each bad field named by its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from models.spec import field_path


class InvalidFields(Exception):
    """A request refused field by field: ``errors`` holds ``(field path, message)`` pairs."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = list(errors)


def _response(errors: Sequence[tuple[str, str]]) -> JSONResponse:
    detail = [{"field": field, "message": message} for field, message in errors]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def describe(error: dict[str, Any]) -> tuple[str, str]:
    """A FastAPI validation error as ``(field, message)``; ``body`` names the body itself."""
    location = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        # The location's second part is a character offset, not a field.
        reason = error.get("ctx", {}).get("error", "")
        offset = location[1] if len(location) > 1 else "?"
        return "body", f"not valid JSON: {reason} at character {offset}".replace(":  at", " at")
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


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidFields, _invalid_fields)
