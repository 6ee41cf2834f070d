"""A local BMS cloud over HTTP (BMS v1, Nova v2.1 subset, IAM) with jobs, quotas and faults,
for tests, benchmarks and the demo. It imports nothing of the orchestrator."""

from simulator.clock import FakeClock, SystemClock
from simulator.config import FaultSettings, IamUser, SimulatorConfig

__all__ = [
    "FakeClock",
    "FaultSettings",
    "IamUser",
    "SimulatorConfig",
    "SimulatorServer",
    "SystemClock",
]


def __getattr__(name: str):
    # The server (its HTTP app and cloud state) only when asked for: ``bmsctl`` reads the options of
    # ``simulator.cli`` for every command and must not pay for it.
    if name == "SimulatorServer":
        from simulator.server import SimulatorServer

        return SimulatorServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
