"""``python -m worker.flower``: with a login set, ``/metrics`` and ``/healthcheck`` need it."""

from __future__ import annotations

import sys
import time

import pytest
import requests

from bmsctl.processes import ManagedProcess, child_env, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def flower(redis_url, tmp_path):
    started = []

    def start(**env: str) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "worker.flower", "--address=127.0.0.1", f"--port={port}"]
        child = ManagedProcess(
            "flower", argv, child_env(BMS_REDIS_URL=redis_url, **env), tmp_path / "flower.log"
        )
        started.append(child)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert child.alive(), child.tail()
            try:
                requests.Session().get(base, timeout=1)
                return base
            except requests.ConnectionError:
                assert time.monotonic() < deadline, child.tail()
                time.sleep(0.2)

    yield start
    for child in started:
        child.stop()


def test_metrics_and_healthcheck_need_the_login_when_one_is_set(flower):
    base = flower(FLOWER_BASIC_AUTH="admin:s3cret")
    http = requests.Session()
    for page in ("/metrics", "/healthcheck", "/api/workers"):
        assert http.get(base + page, timeout=10).status_code == 401, page
        wrong = http.get(base + page, auth=("admin", "wrong"), timeout=10)
        assert wrong.status_code == 401, page
    assert http.get(base + "/healthcheck", auth=("admin", "s3cret"), timeout=10).text == "OK"
    metrics = http.get(base + "/metrics", auth=("admin", "s3cret"), timeout=10)
    assert metrics.status_code == 200
    assert "flower_" in metrics.text


def test_without_a_login_they_stay_open(flower):
    base = flower(FLOWER_UNAUTHENTICATED_API="true")
    http = requests.Session()
    assert http.get(base + "/healthcheck", timeout=10).text == "OK"
    assert http.get(base + "/metrics", timeout=10).status_code == 200
