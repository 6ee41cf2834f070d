"""``/_sim/``: server history, counters, catalog additions and reset."""

from __future__ import annotations

from tests.simulator.helpers import V1


def test_servers_lists_everything_with_history_and_counters_count(simulator_factory):
    simulator = simulator_factory(auth=False)
    v1 = V1(simulator)
    server_id = v1.create_active(name="seen", metadata={"op_svc_userid": "u", "request": "r-9"})

    server = simulator.control.server(server_id)

    assert server["metadata"]["request"] == "r-9"
    assert server["tags"] == ["__type_baremetal"]
    assert [h["status"] for h in server["history"]] == ["BUILD", "ACTIVE"]
    assert all(h["at"] for h in server["history"])
    counters = simulator.control.counters()
    assert counters["create"] == {"calls": 1, "throttled": 0, "faults": 0, "errors": 0}
    assert counters["job"]["calls"] == 1


def test_the_catalog_can_grow(simulator_factory):
    simulator = simulator_factory(auth=False)
    control = simulator.control
    control.add_flavor("physical.x.huge", 128, 1048576, 20000)
    control.add_image("a3e5c3e0-0000-4000-8000-0000000000ff", "Debian 12 64bit")
    control.add_subnet(
        "c1d0e0f0-0000-4000-8000-0000000000c1",
        "10.9.0.0/16",
        vpc_id="c1d0e0f0-0000-4000-8000-0000000000a2",
    )
    added = control.add_volumes(2, size=500)
    v1 = V1(simulator)

    server_id = v1.create_active(
        flavorRef="physical.x.huge",
        imageRef="a3e5c3e0-0000-4000-8000-0000000000ff",
        vpcid="c1d0e0f0-0000-4000-8000-0000000000a2",
        nics=[{"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000c1"}],
    )

    assert control.server(server_id)["addresses"] == ["10.9.0.10"]
    assert [v["size"] for v in added] == [500, 500]
    assert len(control.volumes()) == 202


def test_reset_forgets_servers_and_counters(simulator_factory):
    simulator = simulator_factory(auth=False)
    V1(simulator).create_active()

    simulator.control.reset()

    assert simulator.control.servers() == []
    assert simulator.control.counters()["create"]["calls"] == 0
