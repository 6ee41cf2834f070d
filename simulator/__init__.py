"""A local BMS cloud over HTTP (BMS v1, Nova v2.1 subset, IAM) with jobs, quotas and faults,
for tests, benchmarks and the demo. It imports nothing of the orchestrator."""

from simulator.clock import FakeClock, SystemClock
from simulator.config import FaultSettings, IamUser, SimulatorConfig
from simulator.server import SimulatorServer

__all__ = [
    "FakeClock",
    "FaultSettings",
    "IamUser",
    "SimulatorConfig",
    "SimulatorServer",
    "SystemClock",
]
