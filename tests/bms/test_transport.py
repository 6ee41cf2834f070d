"""The one request path, against a scripted loopback server: gate calls, timeouts, headers,
which calls are retried and which are never sent twice, and what is logged."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
import requests

from bms.auth import AkSkAuth
from bms.client import BmsClient
from bms.exceptions import (
    BadRequest,
    CloudConnectionError,
    CloudTimeout,
    ServerError,
    Throttled,
)
from bms.transport import Transport, UnexpectedResponse
from tests.bms.localserver import LocalServer, Reply

PROJECT = "0123456789abcdef0123456789abcdef"
AK, SK = "BMSSIMDEMOAK0000000", "BMSSIMDEMOSK00000000000000000000000000000"


class Script:
    """Answers with the given replies in order, then repeats the last one."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)

    def __call__(self, seen) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def serve():
    servers = []

    def start(*replies: Reply) -> LocalServer:
        server = LocalServer(Script(*replies)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _client(server, gate_calls, **kwargs):
    client = BmsClient(
        server.base_url,
        PROJECT,
        AkSkAuth(AK, SK, PROJECT),
        timeout=(1.0, 2.0),
        before_call=gate_calls.append,
        retry_backoff=0.001,  # GET retries must not make the tests wait
        **kwargs,
    )
    return client


SERVER = {"server": {"id": "s-1", "name": "a", "status": "ACTIVE"}}


def test_get_is_retried_after_5xx_and_each_try_passes_the_gate(serve):
    server = serve(
        Reply(503, {"error_code": "APIGW.0201", "error_msg": "busy"}), Reply(200, SERVER)
    )
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client:
        assert client.show_server("s-1")["id"] == "s-1"
    assert len(server.calls("GET")) == 2
    assert gate_calls == ["show", "show"]


def test_get_gives_up_after_its_retries(serve):
    server = serve(Reply(500, {"error": {"code": "BMS.3004", "message": "internal"}}))
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client, pytest.raises(ServerError) as caught:
        client.show_job("job-1")
    assert caught.value.error_code == "BMS.3004"
    assert len(server.calls("GET")) == 3
    assert gate_calls == ["job"] * 3


def test_get_is_retried_after_a_dropped_connection(serve):
    server = serve(Reply(drop=True), Reply(200, {"servers": [], "count": 0}))
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client:
        page = client.list_servers(name="x")
    assert (page.servers, page.count) == ([], 0)
    assert gate_calls == ["list", "list"]


def test_a_4xx_or_429_get_is_not_retried(serve):
    server = serve(
        Reply(429, {"error_code": "APIGW.0308", "error_msg": "throttled", "request_id": "r"},
              {"Retry-After": "2"}),
    )  # fmt: skip
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client, pytest.raises(Throttled) as caught:
        client.show_server("s-1")
    assert caught.value.retry_after == 2.0
    assert caught.value.api_class == "show"  # the quota that ran out, for the back-off
    assert len(server.calls()) == 1


@pytest.mark.parametrize(
    "call, api_class",
    [
        (lambda c: c.create_servers({"name": "a"}), "create"),
        (lambda c: c.rename_server("s-1", "b"), "update"),
        (lambda c: c.attach_volume("s-1", "v-1"), "attach"),
        (lambda c: c.detach_volume("s-1", "v-1"), "detach"),
        (lambda c: c.delete_servers(["s-1"]), "list"),
        (lambda c: c.batch_action("os-stop", ["s-1"]), "list"),
        (lambda c: c.nova.create_server({"name": "a"}), "nova"),
        (lambda c: c.nova.delete_server("s-1"), "nova"),
    ],
)
def test_state_changing_calls_are_never_retried_on_5xx(serve, call, api_class):
    server = serve(Reply(503, {"error_code": "APIGW.0201", "error_msg": "busy"}))
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client, pytest.raises(ServerError):
        call(client)
    assert len(server.calls()) == 1
    assert gate_calls == [api_class]


def test_create_answered_by_a_dropped_connection_is_sent_once(serve):
    server = serve(Reply(drop=True))
    gate_calls: list[str] = []
    with _client(server, gate_calls) as client, pytest.raises(CloudConnectionError) as caught:
        client.create_servers({"name": "a", "count": 2})
    assert len(server.calls("POST")) == 1
    assert caught.value.outcome_unknown is True
    assert caught.value.method == "POST"
    assert gate_calls == ["create"]


def test_create_returns_job_and_order(serve):
    server = serve(Reply(200, {"order_id": "CS1", "job_id": "j-1"}))
    with _client(server, []) as client:
        result = client.create_servers({"name": "a"})
    assert (result.job_id, result.order_id) == ("j-1", "CS1")
    seen = server.calls("POST")[0]
    assert seen.path == f"/v1/{PROJECT}/baremetalservers"
    assert seen.body == b'{"server": {"name": "a"}}'


def test_create_success_without_a_job_id_is_an_unexpected_response(serve):
    server = serve(Reply(200, {"something": "else"}))
    with _client(server, []) as client, pytest.raises(UnexpectedResponse):
        client.create_servers({"name": "a"})


def test_every_request_carries_content_type_timeout_and_signature(serve):
    server = serve(Reply(200, SERVER))
    with _client(server, []) as client:
        client.show_server("s-1")
    headers = server.calls("GET")[0].headers
    assert headers["Content-Type"] == "application/json;charset=UTF-8"
    assert headers["X-Project-Id"] == PROJECT
    assert headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=")


def test_native_calls_go_to_the_ecs_endpoint_without_keep_alive(serve):
    bms = serve(Reply(200, SERVER))
    ecs = serve(Reply(200, {"tags": ["__type_baremetal"]}))
    gate_calls: list[str] = []
    with _client(bms, gate_calls, ecs_endpoint=ecs.base_url) as client:
        assert client.nova.list_tags("s 1") == ["__type_baremetal"]
    assert bms.calls() == []
    seen = ecs.calls("GET")[0]
    assert seen.path == f"/v2.1/{PROJECT}/servers/s%201/tags"
    assert seen.headers["Connection"] == "close"
    assert seen.headers["X-OpenStack-Nova-API-Version"] == "2.26"
    assert gate_calls == ["nova"]


def test_ids_cannot_escape_their_path_segment(serve):
    server = serve(Reply(200, SERVER))
    with _client(server, []) as client:
        client.show_server("../x?y=1")
    assert server.calls("GET")[0].path == f"/v1/{PROJECT}/baremetalservers/..%2Fx%3Fy%3D1"


def test_a_gate_that_raises_stops_the_call_before_any_request(serve):
    server = serve(Reply(200, SERVER))

    def closed_gate(api_class):
        raise RuntimeError(f"no capacity for {api_class}")

    client = BmsClient(server.base_url, PROJECT, AkSkAuth(AK, SK), before_call=closed_gate)
    with client, pytest.raises(RuntimeError, match="no capacity for show"):
        client.show_server("s-1")
    assert server.calls() == []


def test_batch_action_rejects_unknown_actions_without_calling(serve):
    server = serve(Reply(200, {"job_id": "j"}))
    with _client(server, []) as client, pytest.raises(ValueError):
        client.batch_action("os-explode", ["s-1"])
    assert server.calls() == []


def test_debug_log_names_method_path_status_and_request_id_only(serve, caplog):
    server = serve(Reply(400, {"error": {"code": "BMS.0001", "message": "bad"}},
                         {"X-Request-Id": "rid-123"}))  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="bms")
    with _client(server, []) as client, pytest.raises(BadRequest):
        client.rename_server("s-1", "secret-looking-name")
    text = caplog.text
    assert f"PUT /v1/{PROJECT}/baremetalservers/s-1 -> 400 request_id=rid-123" in text
    for leak in (SK, "Authorization", "secret-looking-name"):
        assert leak not in text


def test_transport_repr_hides_the_secret_key():
    transport = Transport("http://127.0.0.1:1", AkSkAuth(AK, SK), timeout=(1, 1))
    assert SK not in repr(transport)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_refused_get_is_retried_and_refused_post_is_not():
    gate_calls: list[str] = []
    client = BmsClient(_closed_port_url(), PROJECT, AkSkAuth(AK, SK), timeout=(1.0, 1.0),
                       before_call=gate_calls.append, retry_backoff=0.001)  # fmt: skip
    with client:
        with pytest.raises(CloudConnectionError) as get_error:
            client.show_server("s-1")
        with pytest.raises(CloudConnectionError) as post_error:
            client.create_servers({"name": "a"})
    assert gate_calls == ["show"] * 3 + ["create"]
    assert not get_error.value.outcome_unknown
    assert not post_error.value.outcome_unknown, "a refused connection never reached the cloud"


def test_a_read_timeout_on_a_get_is_not_retried(serve):
    release = threading.Event()
    server = LocalServer(lambda seen: (release.wait(5), Reply(200, SERVER))[1]).start()
    gate_calls: list[str] = []
    client = BmsClient(server.base_url, PROJECT, AkSkAuth(AK, SK), timeout=(1.0, 0.2),
                       before_call=gate_calls.append, retry_backoff=0.001)  # fmt: skip
    try:
        with client, pytest.raises(CloudTimeout) as caught:
            client.show_server("s-1")
    finally:
        release.set()
        server.stop()
    assert gate_calls == ["show"]
    assert caught.value.may_have_reached_server and not caught.value.outcome_unknown


def test_a_job_body_without_status_is_an_unexpected_response(serve):
    server = serve(Reply(200, {"job_id": "j-1"}))
    with _client(server, []) as client, pytest.raises(UnexpectedResponse):
        client.show_job("j-1")


def test_redirects_are_not_followed(serve):
    server = serve(Reply(302, None, {"Location": "http://127.0.0.1:9/elsewhere"}))
    with _client(server, []) as client, pytest.raises(UnexpectedResponse):
        client.create_servers({"name": "a"})
    assert len(server.calls()) == 1


def test_configuration_mistakes_are_not_disguised_as_transient_errors():
    client = BmsClient("nohttp://x", PROJECT, AkSkAuth(AK, SK))
    with client, pytest.raises(requests.exceptions.InvalidSchema):
        client.show_server("s-1")


def test_every_exchange_is_reported_with_its_class_and_status(serve):
    server = serve(
        Reply(drop=True),
        Reply(503, {"error_code": "APIGW.0201", "error_msg": "busy"}),
        Reply(200, SERVER),
        Reply(429, {"error_code": "APIGW.0308", "error_msg": "slow down"}),
    )
    seen: list[tuple[str, int | None]] = []
    with _client(server, [], on_response=lambda c, s: seen.append((c, s))) as client:
        assert client.show_server("s-1")["id"] == "s-1"  # dropped, 503, then 200
        with pytest.raises(Throttled):
            client.show_job("job-1")
    assert seen == [("show", None), ("show", 503), ("show", 200), ("job", 429)]


def test_the_environment_is_read_once_not_per_call(serve, monkeypatch):
    # Issue 11: requests scanned every environment variable for proxies on each call.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    server = serve(Reply(200, SERVER))
    reads: list[str] = []
    original = requests.utils.get_environ_proxies
    monkeypatch.setattr(
        requests.utils,
        "get_environ_proxies",
        lambda url, **k: reads.append(url) or original(url, **k),
    )
    monkeypatch.setattr(
        requests.sessions, "get_environ_proxies", requests.utils.get_environ_proxies
    )
    with _client(server, []) as client:
        made = len(reads)
        for _ in range(3):
            assert client.show_server("s-1")["id"] == "s-1"  # NO_PROXY: straight to the server

    assert len(reads) == made  # nothing read by the calls
    transport = Transport("https://bms.example.com", AkSkAuth(AK, SK, PROJECT), timeout=(1, 1))
    assert transport.session.proxies["https"] == "http://proxy.invalid:3128"  # still honoured
    assert transport.session.verify == "/etc/ssl/certs/ca-certificates.crt"
