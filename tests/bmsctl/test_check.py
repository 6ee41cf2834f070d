"""``bmsctl submit FILE --check``, as a user runs it: a subprocess talking to ``python -m api``
(itself a subprocess) that reads the simulator; nothing is stored or created."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select

from bmsctl.processes import ManagedProcess, child_env, cloud_env, free_port
from models.records import ServerRequest
from tests.factories import batch, server

BMSCTL = Path(sys.executable).with_name("bmsctl")


@pytest.fixture
def api(simulator, redis_url, tmp_path, migrated_templates):
    """``python -m api`` on a free port, configured with the simulator as its cloud."""
    database_url = f"sqlite:///{tmp_path / 'check.db'}"
    migrated_templates.copy_into(database_url)
    port = free_port()
    env = child_env(
        **cloud_env(simulator.base_url, simulator.project_id, simulator.ak, simulator.sk),
        BMS_DATABASE_URL=database_url,
        BMS_REDIS_URL=redis_url,
        BMS_API_PORT=str(port),
    )
    process = ManagedProcess("api", [sys.executable, "-m", "api"], env, tmp_path / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    _wait_until_up(base_url, process)
    yield base_url, database_url
    process.stop()


def _wait_until_up(base_url: str, process: ManagedProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if not process.alive():
                pytest.fail(f"python -m api exited:\n{process.tail()}")
            try:
                session.get(f"{base_url}/healthz", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)  # uvicorn is still opening its port
    pytest.fail("python -m api did not open its port")


def check(base_url: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BMSCTL), "submit", str(path), "--check", "--api", base_url],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )


def stored_requests(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(ServerRequest))
    engine.dispose()
    return count


def test_check_of_a_good_batch_prints_the_plan_and_exits_0(api, simulator, tmp_path):
    base_url, database_url = api
    path = tmp_path / "good.json"
    path.write_text(json.dumps(batch(server(name="web", count=30), server(name="db"))))

    result = check(base_url, path)

    assert result.returncode == 0, result.stderr
    assert f"preflight of {path}: OK" in result.stdout
    assert "create calls: 31 one by one, 2 with grouping (up to 100 servers a call)" in (
        result.stdout
    )
    assert "maxTotalInstances: needs 31" in result.stdout
    assert stored_requests(database_url) == 0
    assert simulator.control.counters()["create"]["calls"] == 0


def test_check_of_a_refused_batch_names_the_fields_and_exits_1(api, simulator, tmp_path):
    base_url, database_url = api
    simulator.control.set_volume("e5e5e5e5-0000-4000-8000-000000000001", status="in-use")
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\n"
        "servers:\n"
        + "".join(
            f"  - {json.dumps(entry)}\n"
            for entry in (
                server(
                    name="db",
                    attach_volumes=[{"volume_id": "e5e5e5e5-0000-4000-8000-000000000001"}],
                ),
                server(name="web", imageRef="no-such-image"),
            )
        )
    )

    result = check(base_url, path)

    assert result.returncode == 1, result.stderr
    assert ": REFUSED" in result.stdout
    assert (
        "servers[0].attach_volumes[0].volume_id: volume e5e5e5e5-0000-4000-8000-000000000001 "
        "is in-use, not available (db)"
    ) in result.stdout
    assert "servers[1].imageRef: image no-such-image does not exist (web)" in result.stdout
    assert stored_requests(database_url) == 0
    assert simulator.control.servers() == []
