"""``serve``/``python -m api``: refuses to start off loopback without a token; serves otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn

from api.server import ServeRefused, check_serve, is_loopback, serve
from bmsctl.processes import free_port
from tests.api.helpers import TOKEN, api_settings


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("api.example.com", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("token", [None, ""])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_serve_refuses_a_public_address_without_a_token(monkeypatch, host, token):
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    settings = api_settings("sqlite://", "redis://127.0.0.1:1/0", api_host=host, api_token=token)

    with pytest.raises(ServeRefused, match="BMS_API_TOKEN"):
        serve(settings)


def test_serve_runs_uvicorn_with_the_settings_address(monkeypatch, tmp_path):
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(options, app=app))
    settings = api_settings(
        f"sqlite:///{tmp_path / 'bms.db'}",
        "redis://127.0.0.1:1/0",
        api_host="0.0.0.0",
        api_port=8123,
        api_token=TOKEN,
    )

    serve(settings)

    assert (started["host"], started["port"]) == ("0.0.0.0", 8123)
    assert started["app"].state.settings is settings


def test_serve_needs_a_broker():
    with pytest.raises(ServeRefused, match="BMS_REDIS_URL"):
        check_serve(api_settings("sqlite://", None))


def _env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMS_")}
    return {**env, **variables}


def test_python_m_api_refuses_a_public_address_without_a_token(redis_url):
    result = subprocess.run(
        [sys.executable, "-m", "api"],
        env=_env(BMS_API_HOST="0.0.0.0", BMS_REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "BMS_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def _wait_until_up(base_url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"python -m api exited: {process.communicate()[0]}")
        try:
            httpx.get(f"{base_url}/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # the port is not open yet: uvicorn is still starting
    pytest.fail("python -m api did not open its port")


def test_python_m_api_serves_with_the_token_and_never_logs_it(
    redis_url, tmp_path, migrated_templates
):
    database_url = f"sqlite:///{tmp_path / 'bms.db'}"
    migrated_templates.copy_into(database_url)
    port = free_port()
    env = _env(
        BMS_DATABASE_URL=database_url,
        BMS_REDIS_URL=redis_url,
        BMS_API_PORT=str(port),
        BMS_API_TOKEN=TOKEN,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "api"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base_url, process)
        health = httpx.get(f"{base_url}/healthz", timeout=5)
        refused = httpx.get(f"{base_url}/v1/batches", timeout=5)
        allowed = httpx.get(
            f"{base_url}/v1/batches", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        )
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert f"127.0.0.1:{port}" in output  # uvicorn's "running on" line: the log was captured
    assert TOKEN not in output


WARM_CHECK = """
from api.app import create_app
from worker.app import app
from worker.settings import get_settings

create_app(get_settings())
assert app.finalized, "the Celery app is finalized"
assert app._pool is not None, "the producer pool is made"
assert "backend" in app._local.__dict__, "the result backend is made"
"""


def test_the_app_is_ready_to_send_before_its_first_submission_even_with_the_broker_down(
    tmp_path,
):
    # What the first POST's bms.start_batch would make in its answer's time is made by
    # create_app; no connection is opened (the broker's port here is closed).
    result = subprocess.run(
        [sys.executable, "-c", WARM_CHECK],
        env=_env(
            BMS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            BMS_DATABASE_URL=f"sqlite:///{tmp_path / 'api.db'}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
