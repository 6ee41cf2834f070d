"""Error mapping: every body shape of reference section 3.1 and every status family, Retry-After,
``transient`` per class, transport failures, pickling, and no secrets in exception text."""

from __future__ import annotations

import json
import pickle
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from bms.exceptions import (
    AuthenticationError,
    BadRequest,
    CloudAPIError,
    CloudConnectionError,
    CloudError,
    CloudTimeout,
    Conflict,
    Forbidden,
    NotFound,
    ServerError,
    Throttled,
    TransientCloudError,
    error_from_transport,
    parse_retry_after,
    raise_from_response,
)
from tests.bms.localserver import LocalServer, Reply

URL = "https://bms.example.test/v1/p/baremetalservers/s-1"
REQUEST_ID = "914a39d68c290da3e187f827f7e1b771"


def _response(status, body, headers=None, method="GET", url=URL):
    response = requests.Response()
    response.status_code = status
    if isinstance(body, bytes):
        response._content = body
    else:
        response._content = b"" if body is None else json.dumps(body).encode()
    response.headers.update(headers or {})
    response.url = url
    response.request = requests.Request(method, url).prepare()
    return response


BMS_BODY = {"error": {"code": "BMS.0222", "message": "primary port can not be deleted."}}
THROTTLE_BODY = {
    "error_msg": "The throttling threshold has been reached: policy user over ratelimit,"
    "limit:50,time:1 minute",
    "error_code": "APIGW.0308",
    "request_id": REQUEST_ID,
}
NOVA_404 = {"itemNotFound": {"code": 404, "message": "Instance s-1 could not be found."}}

# status, body, headers, expected class, expected code, expected message fragment, request id
CASES = [
    (400, BMS_BODY, {}, BadRequest, "BMS.0222", "primary port", None),
    (403, {"error": {"code": "BMS.0033", "message": "no rights"}}, {}, Forbidden, "BMS.0033",
     "no rights", None),
    (404, {"error": {"code": "BMS.0040", "message": "server does not exist"}}, {}, NotFound,
     "BMS.0040", "does not exist", None),
    (500, {"error": {"code": "BMS.3004", "message": "internal"}}, {}, ServerError, "BMS.3004",
     "internal", None),
    (401, {"error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
           "error_code": "APIGW.0301", "request_id": REQUEST_ID}, {}, AuthenticationError,
     "APIGW.0301", "verify aksk", REQUEST_ID),
    (403, {"error_msg": "not authorized", "error_code": "APIGW.0302", "request_id": REQUEST_ID},
     {}, Forbidden, "APIGW.0302", "not authorized", REQUEST_ID),
    (404, {"error_msg": "API not found", "error_code": "APIGW.0101", "request_id": REQUEST_ID},
     {}, NotFound, "APIGW.0101", "API not found", REQUEST_ID),
    (429, THROTTLE_BODY, {}, Throttled, "APIGW.0308", "throttling threshold", REQUEST_ID),
    (502, {"error_msg": "backend unavailable", "error_code": "APIGW.0201", "request_id": "r"},
     {}, ServerError, "APIGW.0201", "backend unavailable", "r"),
    (404, NOVA_404, {}, NotFound, "itemNotFound", "could not be found", None),
    (400, {"badRequest": {"code": 400, "message": "Invalid tag"}}, {}, BadRequest, "badRequest",
     "Invalid tag", None),
    (409, {"conflictingRequest": {"code": 409, "message": "Cannot in vm_state building"}}, {},
     Conflict, "conflictingRequest", "vm_state", None),
    (403, {"forbidden": {"code": 403, "message": "Policy doesn't allow"}}, {}, Forbidden,
     "forbidden", "Policy", None),
    (500, {"computeFault": {"code": 500, "message": "Unexpected API Error"}}, {}, ServerError,
     "computeFault", "Unexpected", None),
    (503, b"<html>Service Unavailable</html>", {}, ServerError, "503", "", None),
    (404, b"", {}, NotFound, "404", "", None),
    (400, b"not json {", {}, BadRequest, "400", "", None),
    (418, {"unexpected": "shape"}, {}, BadRequest, "418", "", None),
    (400, {"code": "Common.0018", "message": "token tenant differs"}, {}, BadRequest,
     "Common.0018", "tenant", None),
    (404, BMS_BODY, {"X-Request-Id": "hdr-id"}, NotFound, "BMS.0222", "primary", "hdr-id"),
    (429, THROTTLE_BODY, {"X-Request-Id": "hdr-id"}, Throttled, "APIGW.0308", "limit:50",
     "hdr-id"),
]  # fmt: skip


@pytest.mark.parametrize(
    "status, body, headers, cls, code, fragment, request_id",
    CASES,
    ids=[f"{c[0]}-{c[3].__name__}-{c[4]}" for c in CASES],
)
def test_raise_from_response_maps_status_and_body(
    status, body, headers, cls, code, fragment, request_id
):
    with pytest.raises(cls) as caught:
        raise_from_response(_response(status, body, headers, method="POST"))
    error = caught.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.error_code == code
    assert fragment in error.message
    assert error.request_id == request_id
    assert error.method == "POST"
    assert error.url == URL
    assert code in str(error) and str(status) in str(error)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 304])
def test_success_statuses_do_not_raise(status):
    raise_from_response(_response(status, None))


@pytest.mark.parametrize(
    "header, expected", [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("soon", None)]
)
def test_throttled_carries_retry_after(header, expected):
    headers = {"Retry-After": header} if header is not None else {}
    with pytest.raises(Throttled) as caught:
        raise_from_response(_response(429, THROTTLE_BODY, headers))
    assert caught.value.retry_after == expected


def test_retry_after_as_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert 50 < parse_retry_after(_http_date_in(60)) <= 60


def _http_date_in(seconds):
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    "cls, transient",
    [
        (BadRequest, False),
        (AuthenticationError, False),
        (Forbidden, False),
        (NotFound, False),
        (Conflict, True),
        (Throttled, True),
        (ServerError, True),
        (CloudTimeout, True),
        (CloudConnectionError, True),
        (CloudAPIError, False),
        (CloudError, False),
    ],
)
def test_transient_is_a_property_of_the_class(cls, transient):
    assert cls.transient is transient
    assert issubclass(cls, TransientCloudError) is transient
    assert issubclass(cls, CloudError)


def test_exceptions_survive_pickling_with_their_fields():
    throttled = Throttled(429, "APIGW.0308", "slow down", "rid", "POST", URL, retry_after=3.0)
    again = pickle.loads(pickle.dumps(throttled))
    assert (again.status_code, again.error_code, again.retry_after) == (429, "APIGW.0308", 3.0)
    timeout = CloudTimeout("read timeout", "POST", URL, True)
    again = pickle.loads(pickle.dumps(timeout))
    assert (again.method, again.url, again.outcome_unknown) == ("POST", URL, True)


def test_exception_text_never_holds_request_headers_or_body():
    response = _response(401, {"error_code": "APIGW.0301", "error_msg": "decrypt token fail"})
    response.request.headers["X-Auth-Token"] = "secret-token-value"
    response.request.headers["Authorization"] = "SDK-HMAC-SHA256 Access=AK, Signature=abc"
    response.request.body = b'{"password": "hunter2"}'
    with pytest.raises(AuthenticationError) as caught:
        raise_from_response(response)
    text = str(caught.value) + repr(caught.value) + repr(vars(caught.value))
    for secret in ("secret-token-value", "Signature=abc", "hunter2"):
        assert secret not in text


# --- transport failures over real sockets ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_certainly_did_not_reach_the_server():
    url = f"http://127.0.0.1:{_free_port()}/v1/p/baremetalservers"
    with pytest.raises(requests.ConnectionError) as caught:
        requests.Session().post(url, json={}, timeout=(1, 1))
    error = error_from_transport(caught.value, "POST", url)
    assert isinstance(error, CloudConnectionError)
    assert error.may_have_reached_server is False
    assert error.outcome_unknown is False


def test_dropped_connection_after_a_post_is_an_unknown_outcome():
    server = LocalServer(lambda seen: Reply(drop=True)).start()
    url = f"{server.base_url}/v1/p/baremetalservers"
    try:
        with pytest.raises(requests.ConnectionError) as caught:
            requests.Session().post(url, json={}, timeout=(1, 2))
    finally:
        server.stop()
    error = error_from_transport(caught.value, "POST", url)
    assert isinstance(error, CloudConnectionError)
    assert error.may_have_reached_server is True
    assert error.outcome_unknown is True
    assert (error.method, error.url) == ("POST", url)


def test_read_timeout_is_an_unknown_outcome_for_a_post_but_not_for_a_get():
    release = threading.Event()

    def slow(seen):
        release.wait(5)
        return Reply(200, {})

    server = LocalServer(slow).start()
    url = f"{server.base_url}/v1/p/x"
    try:
        with pytest.raises(requests.Timeout) as caught:
            requests.Session().post(url, json={}, timeout=(1, 0.2))
    finally:
        release.set()
        server.stop()
    post_error = error_from_transport(caught.value, "POST", url)
    get_error = error_from_transport(caught.value, "GET", url)
    assert isinstance(post_error, CloudTimeout) and post_error.outcome_unknown
    assert get_error.may_have_reached_server and not get_error.outcome_unknown
