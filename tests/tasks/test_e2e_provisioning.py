"""End to end: real worker processes, real Redis, a migrated database, the simulator over HTTP."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.records import Event
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


def test_plain_servers_end_active_in_the_run_of_their_create_poll(stack_factory):
    # No tag, no volume, their own names: the poll that sees the create done reads the server
    # back and ends the request in one transaction (issue 11), so its two events carry the
    # same instant, and the cloud was asked for nothing else.
    stack = stack_factory()
    stack.start_worker("all", concurrency=4)
    body = {"name": "plain", "servers": [server(name=f"plain-{i}") for i in range(5)]}
    submitted = stack.submit(body)

    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert [r.state for r in requests] == [RequestState.ACTIVE] * 5
    assert all(r.addresses for r in requests)
    with session_scope(stack.sessions) as session:
        rows = session.execute(
            select(Event.request_id, Event.from_state, Event.to_state, Event.at).where(
                Event.request_id.in_([r.id for r in requests])
            )
        ).all()
    at = {(row.request_id, row.from_state, row.to_state): row.at for row in rows}
    for request in requests:
        built = at[(request.id, RequestState.BUILDING, RequestState.TAGGING)]
        assert at[(request.id, RequestState.TAGGING, RequestState.ACTIVE)] == built
    counters = stack.simulator.control.counters()
    assert counters["show"]["calls"] == 5 and counters["create"]["calls"] == 5
