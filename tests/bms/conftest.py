"""Fixtures for client tests against the simulator over loopback HTTP.

One simulator per test module, on a free port and a :class:`~simulator.FakeClock`: jobs finish
when a test moves the clock forward, never by sleeping. Each test starts from a reset cloud.
``client`` runs each test twice, with AK/SK signing and with an IAM token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from bms.auth import AkSkAuth, TokenAuth
from bms.client import BmsClient
from bms.jobs import Job, JobOutcome
from simulator import FakeClock, SimulatorConfig, SimulatorServer


@dataclass
class Cloud:
    """A running simulator and its introspection endpoints."""

    server: SimulatorServer
    clock: FakeClock
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def sim(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self.http.request(method, f"{self.base_url}/_sim/{path}", json=body, timeout=5)
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, int]:
        """Calls counted per API class by the simulator's gateway."""
        return {name: c["calls"] for name, c in self.sim("GET", "counters")["counters"].items()}

    def servers(self) -> list[dict]:
        """Every server the simulator ever created, deleted ones included."""
        return self.sim("GET", "servers")["servers"]


@pytest.fixture(scope="module")
def simulator_cloud() -> Iterator[Cloud]:
    clock = FakeClock()
    server = SimulatorServer(SimulatorConfig(port=0), clock=clock)
    server.start()
    yield Cloud(server, clock)
    server.stop()


@pytest.fixture
def cloud(simulator_cloud: Cloud) -> Cloud:
    simulator_cloud.sim("POST", "reset")
    simulator_cloud.sim("PUT", "faults", {"drop_share": 0.0, "http_500_share": 0.0,
                                          "http_503_share": 0.0})  # fmt: skip
    return simulator_cloud


@dataclass
class Harness:
    """A client under test, the gate calls it made, and the cloud it talks to."""

    client: BmsClient
    cloud: Cloud
    gate_calls: list[str]

    def gate_counts(self) -> Counter:
        return Counter(self.gate_calls)

    def wait_job(self, job_id: str, step: float = 0.5, limit: int = 120) -> Job:
        """Poll the job, moving the simulated clock between polls, until it is finished."""
        for _ in range(limit):
            job = self.client.show_job(job_id)
            if job.outcome is not JobOutcome.RUNNING:
                return job
            self.cloud.clock.advance(step)
        raise AssertionError(f"job {job_id} still running after {limit * step}s simulated")

    def settle(self, seconds: float = 10.0) -> None:
        """Let every scheduled transition (power actions, Nova creates) happen."""
        self.cloud.clock.advance(seconds)


def make_auth(kind: str, cloud: Cloud):
    server = cloud.server
    if kind == "aksk":
        # Sign with the simulator's clock: its skew check compares against simulated time.
        return AkSkAuth(server.ak, server.sk, server.project_id, clock=cloud.clock.now)
    return TokenAuth(cloud.base_url, "demo", "demo-password", "demo", server.project_id)


@pytest.fixture(params=["aksk", "token"])
def harness(request, cloud: Cloud) -> Iterator[Harness]:
    gate_calls: list[str] = []
    client = BmsClient(
        cloud.base_url,
        cloud.server.project_id,
        make_auth(request.param, cloud),
        timeout=(2.0, 10.0),
        before_call=gate_calls.append,
        retry_backoff=0.001,  # GET retries must not make the tests wait
    )
    with client:
        yield Harness(client, cloud, gate_calls)
