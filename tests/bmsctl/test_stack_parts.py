"""The embedded stack's decisions, without starting processes: environments and ``--fresh``."""

from __future__ import annotations

import signal
import socket

import pytest

from bmsctl import stack as stack_module
from bmsctl.stack import SIMULATOR_STATE_FILE, EmbeddedStack, StackError, StackOptions
from worker.settings import load_settings

SECRETS = {
    "database_url": "postgresql+psycopg://bms:db-secret@db.example/bms",
    "ak": "AK-secret",
    "sk": "SK-secret",
    "iam_user": "user",
    "iam_password": "iam-secret",
    "iam_domain": "domain",
    "api_token": "api-secret",
    "flower_basic_auth": "admin:flower-secret",
}


@pytest.fixture
def stack(tmp_path):
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", **SECRETS)
    return EmbeddedStack(settings, StackOptions(tmp_path))


def secrets_in(env: dict[str, str]) -> set[str]:
    return {name for name, value in SECRETS.items() if any(value in v for v in env.values())}


def test_each_kind_of_child_gets_only_the_secrets_it_uses(stack):
    assert secrets_in(stack.env_for("flower")) == set()
    assert secrets_in(stack.env_for("beat")) == set()
    assert secrets_in(stack.env_for("api")) == {"database_url", "api_token"}
    assert secrets_in(stack.env_for("worker")) == {
        "database_url", "ak", "sk", "iam_user", "iam_password", "iam_domain"
    }  # fmt: skip
    assert secrets_in(stack.env_for("webhook-worker")) == {"database_url"}


def test_what_the_stack_decides_wins_over_a_setting_of_the_same_name(stack):
    """With BMS_REDIS_URL set, ``up`` used to crash: "got multiple values for BMS_REDIS_URL"."""
    stack.decided["BMS_REDIS_URL"] = "redis://127.0.0.1:2/0"
    stack.decided["BMS_FLOWER_PORT"] = "5600"
    env = stack.env_for("worker", EXTRA="1")
    assert env["BMS_REDIS_URL"] == "redis://127.0.0.1:2/0"
    assert env["BMS_FLOWER_PORT"] == "5600"
    assert env["EXTRA"] == "1"


def test_fresh_forgets_the_saved_cloud_and_says_so(stack, monkeypatch):
    saved = stack.options.directory / SIMULATOR_STATE_FILE
    saved.write_text("{}")
    started = []
    monkeypatch.setattr(stack, "_spawn", lambda name, argv, env, ready: started.append(argv))

    stack._start_simulator()
    assert stack.notes == [f"simulated cloud: loaded from {saved}"]
    assert started[0][started[0].index("--state-file") + 1] == str(saved)

    stack.options.fresh, stack.notes = True, []
    stack._start_simulator()
    assert not saved.exists()
    assert stack.notes[0].startswith(f"simulated cloud: new and empty (saved to {saved}")


@pytest.mark.parametrize("part", ["flower", "api"])
def test_a_taken_port_is_refused_before_any_part_starts(tmp_path, monkeypatch, part):
    """It used to be found only after Redis, the migrations, the simulator and the workers had
    started (and were stopped again): 15 s on a busy machine for an error known at once."""
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        ports = {"api_port": 0, "flower_port": 0} | {f"{part}_port": port}
        settings = load_settings(redis_url="redis://127.0.0.1:1/0", **SECRETS)
        stack = EmbeddedStack(settings, StackOptions(tmp_path, **ports))
        started = []
        monkeypatch.setattr(stack, "_spawn", lambda name, *rest: started.append(name))
        monkeypatch.setattr(stack, "_migrate", lambda: started.append("migrations"))

        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is in use"):
            stack.start()

    assert started == []
    assert not stack.lock.held


class FakeChild:
    """Records what a stop does to it, in one log shared by the stack's children."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def _signal_group(self, signum: int) -> None:
        self.log.append(f"{signal.Signals(signum).name} {self.name}")

    def _wait_stopped(self, deadline: float) -> None:
        self.log.append(f"wait {self.name}")


def test_stop_signals_every_user_of_redis_at_once_and_stops_redis_last(stack):
    """One after another, each worker's second of shutdown added up: 4.8 s for a stack."""
    log: list[str] = []
    names = ["redis", "simulator", "worker-cloud", "worker-control", "beat", "api"]
    stack.children = [FakeChild(name, log) for name in names]

    assert stack.stop() == 6

    users = ["api", "beat", "worker-control", "worker-cloud"]
    assert log == (
        [f"SIGTERM {name}" for name in users]
        + [f"wait {name}" for name in users]
        + ["SIGTERM simulator", "SIGTERM redis", "wait simulator", "wait redis"]
    )


def test_children_boot_side_by_side_and_flower_after_the_workers_answer(tmp_path, monkeypatch):
    """Each child used to be waited for before the next was started (24 s for ``up`` at load
    8, 9 s after); Flower asks the workers what they are when it starts, so it comes after."""
    log: list[str] = []

    class Started:
        def __init__(self, name, argv, env, log_path):
            self.name = name
            log.append(f"start {name}")

    def ready(*args):
        child = next(arg for arg in args if isinstance(arg, Started))
        log.append(f"ready {child.name}")

    monkeypatch.setattr(stack_module, "ManagedProcess", Started)
    for waiter in ("_wait_http", "_wait_for_worker", "_wait_alive"):
        monkeypatch.setattr(stack_module, waiter, ready)
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", **SECRETS)
    stack = EmbeddedStack(settings, StackOptions(tmp_path, api_port=0, flower_port=0))
    monkeypatch.setattr(stack, "_migrate", lambda: log.append("migrations"))
    monkeypatch.setattr(stack, "_hand_back", lambda queues: 0)
    monkeypatch.setattr(stack, "_write_state", lambda: None)

    stack.start()

    booted_together = ["worker-cloud", "worker-control", "worker-webhook", "beat", "api"]
    assert log == (
        ["start simulator", "migrations"]
        + [f"start {name}" for name in booted_together]
        + [f"ready {name}" for name in ["simulator", *booted_together]]
        + ["start flower", "ready flower"]
    )
    # Listed as before, though they start in another order.
    assert list(stack.addresses) == ["redis", "cloud", "workers", "flower", "api", "dashboard"]
