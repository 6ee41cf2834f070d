"""The supervisor's policy, on stand-in children: restart with back-off, give up on a crash loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from bmsctl.stack import StackError
from bmsctl.supervise import RestartPolicy, Supervisor


@dataclass
class FakeChild:
    name: str
    pid: int = 100
    returncode: int | None = None

    def alive(self) -> bool:
        return self.returncode is None


@dataclass
class FakeStack:
    children: list[FakeChild]
    restarts: list[str] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def restart(self, child: FakeChild) -> None:
        self.restarts.append(child.name)
        child.pid += 1
        if child.name in self.failing:
            child.returncode = 1
            raise StackError(f"{child.name} exited with code 1 at start:\nboom")
        child.returncode = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(stack: FakeStack, clock: Clock, lines: list[str]) -> Supervisor:
    return Supervisor(stack, RestartPolicy(), log=lines.append, clock=clock)


def test_a_dead_child_is_restarted_after_its_delay_with_one_line_saying_why():
    worker = FakeChild("worker-cloud", pid=41)
    stack, clock, lines = FakeStack([FakeChild("redis"), worker]), Clock(), []
    watcher = supervisor(stack, clock, lines)

    worker.returncode = -9
    assert watcher.check() is None
    assert lines == ["worker-cloud (pid 41) killed by SIGKILL; restarting in 0.5s"]
    assert stack.restarts == []  # not before its delay
    clock.now += 0.5
    assert watcher.check() is None
    assert stack.restarts == ["worker-cloud"]
    assert lines[-1] == "worker-cloud restarted (pid 42)"


def test_the_delay_doubles_while_a_child_keeps_dying():
    worker = FakeChild("api")
    stack, clock, lines = FakeStack([worker]), Clock(), []
    watcher = supervisor(stack, clock, lines)
    delays = []
    for _ in range(4):
        worker.returncode = 3
        watcher.check()
        delays.append(watcher.pending["api"] - clock.now)
        clock.now = watcher.pending["api"]
        watcher.check()
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert "exited with code 3" in lines[0]


def test_five_deaths_in_a_minute_give_up_with_the_reason():
    worker = FakeChild("beat")
    stack, clock, lines = FakeStack([worker]), Clock(), []
    watcher = supervisor(stack, clock, lines)
    reason = None
    for _ in range(5):
        worker.returncode = -15
        reason = watcher.check()
        if reason:
            break
        clock.now = watcher.pending["beat"]
        watcher.check()
    assert reason is not None
    assert reason.startswith("beat keeps dying (5 times in 60s; last: pid")
    assert reason.endswith("killed by SIGTERM)")


def test_deaths_older_than_the_window_are_forgotten():
    worker = FakeChild("flower")
    stack, clock, lines = FakeStack([worker]), Clock(), []
    watcher = supervisor(stack, clock, lines)
    for _ in range(10):
        worker.returncode = 1
        assert watcher.check() is None
        clock.now = watcher.pending["flower"]
        watcher.check()
        clock.now += 30  # two deaths a minute at most
    assert len(stack.restarts) == 10


def test_a_restart_that_fails_counts_as_a_death():
    worker = FakeChild("simulator")
    stack, clock, lines = FakeStack([worker], failing={"simulator"}), Clock(), []
    watcher = supervisor(stack, clock, lines)
    worker.returncode = -9
    reason = None
    while reason is None:
        reason = watcher.check()
        if "simulator" in watcher.pending:
            clock.now = watcher.pending["simulator"]
    assert len(stack.restarts) == 4
    assert "failed to restart: simulator exited with code 1 at start" in reason


def test_a_child_waits_for_the_ones_started_before_it():
    """Redis and a worker die together: the worker comes back only after Redis."""
    redis, worker = FakeChild("redis", returncode=-9), FakeChild("worker-cloud", returncode=-9)
    stack, clock, lines = FakeStack([redis, worker], failing={"redis"}), Clock(), []
    watcher = supervisor(stack, clock, lines)
    watcher.check()
    clock.now += 0.5
    watcher.check()
    assert stack.restarts == ["redis"]  # it failed: the worker is not tried against no Redis
    stack.failing.clear()
    clock.now = watcher.pending["redis"]
    watcher.check()
    assert stack.restarts == ["redis", "redis", "worker-cloud"]
