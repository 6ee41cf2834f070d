"""End to end: real worker processes, real Redis, a migrated database, the simulator over HTTP."""

from __future__ import annotations

import pytest

from models.states import RequestState
from tests.factories import server

pytestmark = pytest.mark.e2e

BAREMETAL = "__type_baremetal"


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"


def twenty_servers() -> dict:
    servers = []
    for i in range(20):
        volumes = [{"volume_id": volume(2 * i + 1)}]
        if i % 2 == 0:
            volumes.append({"volume_id": volume(2 * i + 2), "device": "/dev/sdc"})
        servers.append(server(name=f"node-{i:02d}", attach_volumes=volumes, tags=["e2e", f"n{i}"]))
    return {"name": "twenty", "servers": servers}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_twenty_servers_end_active_with_volumes_and_tags(stack_factory, backend):
    stack = stack_factory(backend)
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit(twenty_servers())

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [RequestState.ACTIVE] * 20
    cloud = {s["id"]: s for s in stack.simulator.control.servers()}
    for request in requests:
        live = cloud[request.server_id]
        assert live["status"] == "ACTIVE" and not live["deleted"]
        assert live["name"] == request.name
        assert sorted(live["tags"]) == sorted([*request.spec["tags"], BAREMETAL])
        wanted = {a["volume_id"] for a in request.spec["attach_volumes"]}
        assert {v["id"] for v in live["volumes"]} == wanted
        assert request.addresses
    # One server per request: no duplicate was ever created.
    assert len(cloud) == 20
