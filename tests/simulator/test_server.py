"""The HTTP front: keep-alive rules, request ids, unknown paths, and start/stop."""

from __future__ import annotations

import http.client
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from simulator import SimulatorConfig, SimulatorServer
from tests.simulator.helpers import V1


def test_v1_keeps_the_connection_open_for_several_calls(simulator_factory):
    simulator = simulator_factory(auth=False)
    connection = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=10)
    path = f"/v1/{simulator.project_id}/baremetalservers/flavors"

    for _ in range(3):
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Connection") is None
    connection.close()


def test_an_unknown_path_is_the_gateway_404(simulator, http):
    response = http.get(f"{simulator.base_url}/v9/nothing", timeout=10)

    assert response.status_code == 404
    assert response.json()["error_code"] == "APIGW.0101"
    assert len(response.json()["request_id"]) == 32


def test_a_wrong_project_is_refused(simulator_factory, http):
    simulator = simulator_factory(auth=False)

    response = http.get(f"{simulator.base_url}/v1/{'f' * 32}/baremetalservers/detail", timeout=10)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Common.0018"


def test_the_server_is_a_context_manager_on_a_free_port(http):
    with SimulatorServer(SimulatorConfig(port=0)) as simulator:
        assert simulator.port > 0
        assert simulator.control.config()["project_id"] == simulator.project_id
        url = simulator.base_url
    try:
        http.get(url + "/_sim/config", timeout=2)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("the simulator still answers after stop()")


def test_stop_also_cuts_open_keep_alive_connections(simulator_factory):
    simulator = simulator_factory(auth=False)
    connection = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=10)
    path = f"/v1/{simulator.project_id}/baremetalservers/flavors"
    connection.request("GET", path)
    connection.getresponse().read()

    simulator.stop()

    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.request("GET", path)
        connection.getresponse()
    connection.close()


def test_concurrent_creates_get_distinct_servers_and_addresses(simulator_factory):
    simulator = simulator_factory(auth=False)

    def create_batch(index: int) -> int:
        return V1(simulator).create(name=f"t{index}", count=5).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(create_batch, range(8)))

    servers = simulator.control.servers()
    assert statuses == [200] * 8
    assert len({s["id"] for s in servers}) == 40
    assert len({s["addresses"][0] for s in servers}) == 40
