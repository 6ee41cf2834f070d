"""How the command line reaches a running orchestrator: its REST API.

The address comes from ``--api``, else ``BMS_API_URL``, else the ``stack.json`` that
``bmsctl up`` writes in its directory, else ``http://127.0.0.1:8000``. The token, when the API
needs one, comes from ``BMS_API_TOKEN``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import requests

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_STACK_DIR = Path("var")


class ApiError(RuntimeError):
    """The API refused a call; the message carries its explanation."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        if isinstance(detail, list):
            text = "\n".join(f"  {d.get('field')}: {d.get('message')}" for d in detail)
        else:
            text = str(detail)
        super().__init__(f"HTTP {status}:\n{text}" if isinstance(detail, list) else text)


def api_url(explicit: str | None, stack_dir: Path = DEFAULT_STACK_DIR) -> str:
    if explicit:
        return explicit
    if os.environ.get("BMS_API_URL"):
        return os.environ["BMS_API_URL"]
    state = stack_dir / "stack.json"
    if state.exists():
        api = json.loads(state.read_text())["addresses"].get("api", "")
        if api:
            return api.split()[0]
    return DEFAULT_API_URL


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_args(cls, args) -> ApiClient:
        return cls(api_url(getattr(args, "api", None)), os.environ.get("BMS_API_TOKEN") or None)

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError:
            raise ApiError(0, f"no API at {self.base_url}: is `bmsctl up` running?") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def submit(self, batch: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/batches", json=batch, headers=headers)

    def dry_run(self, batch: dict) -> dict:
        """The preflight of ``batch`` alone: nothing stored, nothing created."""
        return self._call("POST", "/v1/batches", params={"dry_run": "true"}, json=batch)

    def batches(self, limit: int = 50) -> dict:
        return self._call("GET", "/v1/batches", params={"limit": limit})

    def batch(self, batch_id: str, limit: int | None = None) -> dict:
        """The batch with its counts; with ``limit``, that many requests (one page), else
        every request (each page in turn)."""
        path = f"/v1/batches/{batch_id}"
        if limit is not None:
            return self._call("GET", path, params={"limit": limit})
        view = self._call("GET", path)
        while view["next_cursor"] is not None:
            page = self._call("GET", path, params={"cursor": view["next_cursor"]})
            view = {**page, "requests": view["requests"] + page["requests"]}
        return view

    def request(self, request_id: str) -> dict:
        return self._call("GET", f"/v1/requests/{request_id}")

    def cancel_batch(self, batch_id: str) -> dict:
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")

    def retry_batch(self, batch_id: str) -> dict:
        return self._call("POST", f"/v1/batches/{batch_id}/retry")

    def teardown_batch(self, batch_id: str) -> dict:
        return self._call("POST", f"/v1/batches/{batch_id}/teardown")

    def retry_request(self, request_id: str) -> dict:
        return self._call("POST", f"/v1/requests/{request_id}/retry")

    def cancel_request(self, request_id: str) -> dict:
        return self._call("POST", f"/v1/requests/{request_id}/cancel")
