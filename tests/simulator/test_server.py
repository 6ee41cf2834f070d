"""The HTTP front: keep-alive rules, request ids, unknown paths, and start/stop."""

from __future__ import annotations

import http.client

import requests

from simulator import SimulatorConfig, SimulatorServer


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
