"""AK/SK signing (reference section 2.2 vectors, parity with huaweicloudsdkcore's Signer) and
IAM token auth (caching, expiry, one re-send on 401) against a loopback server."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import pytest
import requests
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from bms.auth import AkSkAuth, TokenAuth, canonical_query, canonical_uri, sign
from bms.exceptions import AuthenticationError
from bms.transport import Transport
from tests.bms.localserver import LocalServer, Reply

AK = "AKEXAMPLE0000000000"
SK = "SKEXAMPLE0000000000000000000000000000000"
PROJECT = "0123456789abcdef0123456789abcdef"
HOST = "bms.cn-north-4.myhuaweicloud.com"
VECTOR_DATE = datetime(2024, 1, 1, tzinfo=UTC)

PUT_VECTOR_SIGNATURE = "1665ef781cb4a21e6f00d5e20d5ae0846db2418988655b3c412d93ab6744ffdb"
GET_VECTOR_SIGNATURE = "95e49d0cd0c704b7a037de2f517ceac4dd28daeed8a18a5e9002db1c3dc04a49"


# --- the two published vectors ------------------------------------------------------------------


def test_put_vector_with_the_signing_function():
    headers = {
        "Content-Type": "application/json;charset=UTF-8",
        "Host": HOST,
        "X-Project-Id": PROJECT,
        "X-Sdk-Date": "20240101T000000Z",
    }
    path = f"/v1/{PROJECT}/baremetalservers/53206ed0-56de-4d6b-b7ee-ffc62ca26f43"
    value = sign("PUT", path, [], headers, b'{"server":{"name":"new-name"}}', AK, SK)
    assert value == (
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
        f"Signature={PUT_VECTOR_SIGNATURE}"
    )


def test_get_vector_with_the_signing_function():
    headers = {"Content-Type": "application/json", "Host": HOST, "X-Sdk-Date": "20240101T000000Z"}
    path = f"/v1/{PROJECT}/baremetalservers/detail"
    value = sign("GET", path, [("name", "bms-a"), ("limit", "10")], headers, b"", AK, SK)
    assert canonical_query([("name", "bms-a"), ("limit", "10")]) == "limit=10&name=bms-a"
    assert value.endswith(
        f"SignedHeaders=content-type;host;x-sdk-date, Signature={GET_VECTOR_SIGNATURE}"
    )


def _prepare(method, url, *, params=None, body=None, content_type="application/json"):
    request = requests.Request(
        method, url, params=params, data=body, headers={"Content-Type": content_type}
    )
    return requests.Session().prepare_request(request)


def test_put_vector_through_the_auth_object():
    auth = AkSkAuth(AK, SK, PROJECT, clock=lambda: VECTOR_DATE)
    request = _prepare(
        "PUT",
        f"https://{HOST}/v1/{PROJECT}/baremetalservers/53206ed0-56de-4d6b-b7ee-ffc62ca26f43",
        body=b'{"server":{"name":"new-name"}}',
        content_type="application/json;charset=UTF-8",
    )
    signed = auth(request)
    assert signed.headers["X-Sdk-Date"] == "20240101T000000Z"
    assert signed.headers["X-Project-Id"] == PROJECT
    assert signed.headers["Host"] == HOST
    assert signed.headers["Authorization"].endswith(
        f"SignedHeaders=content-type;host;x-project-id;x-sdk-date, Signature={PUT_VECTOR_SIGNATURE}"
    )


def test_get_vector_through_the_auth_object_rewrites_the_query_canonically():
    auth = AkSkAuth(AK, SK, clock=lambda: VECTOR_DATE)
    request = _prepare(
        "GET",
        f"https://{HOST}/v1/{PROJECT}/baremetalservers/detail",
        params=[("name", "bms-a"), ("limit", "10")],
    )
    signed = auth(request)
    assert urlsplit(signed.url).query == "limit=10&name=bms-a"
    assert signed.headers["Authorization"].endswith(f"Signature={GET_VECTOR_SIGNATURE}")


def test_canonical_uri_decodes_then_encodes_each_segment_and_ends_with_slash():
    assert canonical_uri("/v1/p/baremetalservers/detail") == "/v1/p/baremetalservers/detail/"
    assert canonical_uri("/a%20b/~x/%C3%BC/") == "/a%20b/~x/%C3%BC/"
    assert canonical_uri("/") == "/"


# --- parity with huaweicloudsdkcore's own Signer -------------------------------------------------

_SEGMENTS = ["servers", "a b", "ü-ñ", "tilde~x", "plus+sign", "semi;colon", "pct%41", "東京", "x.y"]
_KEYS = ["name", "tags", "a b", "ü", "limit", "k~"]
_VALUES = ["", "1", "bms a", "x+y", "a/b", "ü", "~t", "q&r=s", "50%", "東"]
_BODIES = [None, b'{"server":{"name":"new-name"}}', '{"name": "ünïcode"}'.encode(), b"[]"]


def _generated_requests(count: int):
    rng = random.Random(20240101)
    for _ in range(count):
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        segments = [rng.choice(_SEGMENTS) for _ in range(rng.randint(1, 3))]
        pairs = [(rng.choice(_KEYS), rng.choice(_VALUES)) for _ in range(rng.randint(0, 4))]
        body = None if method in ("GET", "DELETE") else rng.choice(_BODIES)
        content_type = rng.choice(["application/json;charset=UTF-8", "application/json"])
        if body is not None and rng.random() < 0.15:
            content_type = "application/octet-stream"  # non-JSON: UNSIGNED-PAYLOAD
        project_id = rng.choice([PROJECT, None])
        yield method, segments, pairs, body, content_type, project_id


def _sdk_authorization(method, host, segments, pairs, body, content_type, project_id, date):
    # The SDK builds resource_path by quoting each path parameter with safe='' (client.py
    # _parse_path_params) and signs whatever headers it was given, plus Host.
    resource_path = f"/v1/{PROJECT}/" + "/".join(quote(s, safe="") for s in segments)
    headers = {"Content-Type": content_type, "X-Sdk-Date": date}
    if project_id:
        headers["X-Project-Id"] = project_id
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=resource_path,
        query_params=list(pairs),
        header_params=headers,
        body=body or "",
    )

    class _Credentials:
        ak, sk = AK, SK

    return Signer(_Credentials()).sign(request).header_params["Authorization"]


@pytest.mark.parametrize("case", list(_generated_requests(60)), ids=lambda c: c[0])
def test_same_signature_as_huaweicloudsdkcore(case):
    method, segments, pairs, body, content_type, project_id = case
    host = "bms.example.test:8443"
    # Segments quoted as BmsClient quotes ids; requests then re-quotes the URL its own way.
    url = f"https://{host}/v1/{PROJECT}/" + "/".join(quote(s, safe="") for s in segments)
    auth = AkSkAuth(AK, SK, project_id, clock=lambda: VECTOR_DATE)
    ours = auth(_prepare(method, url, params=pairs, body=body, content_type=content_type))
    theirs = _sdk_authorization(
        method, host, segments, pairs, body, content_type, project_id, "20240101T000000Z"
    )
    assert ours.headers["Authorization"] == theirs


def test_parity_cases_cover_the_odd_inputs():
    cases = list(_generated_requests(60))
    assert any(len(pairs) != len({key for key, _ in pairs}) for _, _, pairs, *_ in cases)
    assert any(seg in ("a b", "ü-ñ", "tilde~x", "東京") for _, segs, *_ in cases for seg in segs)
    assert any(ct == "application/octet-stream" for *_, ct, _ in cases)
    assert {case[0] for case in cases} == {"GET", "POST", "PUT", "DELETE"}


# --- secrets -------------------------------------------------------------------------------------


def test_aksk_auth_never_shows_its_secret_key():
    auth = AkSkAuth(AK, SK, PROJECT)
    for text in (repr(auth), str(auth), f"{auth}"):
        assert SK not in text
        assert AK not in text  # the access key is shown masked only
        assert PROJECT in text


def test_aksk_auth_needs_both_keys():
    with pytest.raises(ValueError):
        AkSkAuth("", SK)


# --- IAM token -----------------------------------------------------------------------------------


class FakeIam:
    """IAM plus one protected API on the same loopback server; tokens can be revoked."""

    def __init__(self, lifetime=timedelta(hours=24)):
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.token_bodies: list[dict] = []
        self.iam_reply: Reply | None = None

    def __call__(self, seen):
        if seen.path == "/v3/auth/tokens":
            self.token_bodies.append(json.loads(seen.body))
            if self.iam_reply is not None:
                return self.iam_reply
            token = f"token-{len(self.issued)}"
            self.issued.append(token)
            self.valid.add(token)
            expires = datetime.now(UTC) + self.lifetime
            body = {"token": {"expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
            return Reply(201, body, {"X-Subject-Token": token})
        if seen.headers.get("X-Auth-Token") in self.valid:
            return Reply(200, {"ok": True})
        gateway = {"error_code": "APIGW.0301", "error_msg": "decrypt token fail"}
        return Reply(401, gateway)


@pytest.fixture
def iam():
    fake = FakeIam()
    server = LocalServer(fake).start()
    fake.server = server
    yield fake
    server.stop()


def _token_auth(iam, project=PROJECT):
    return TokenAuth(iam.server.base_url, "demo", "demo-password", "demo", project)


def _transport(iam, auth, gate_calls):
    return Transport(iam.server.base_url, auth, timeout=(2, 5), before_call=gate_calls.append)


def test_token_is_fetched_once_and_reused(iam):
    gate_calls: list[str] = []
    transport = _transport(iam, _token_auth(iam), gate_calls)
    for _ in range(3):
        transport.request("show", "GET", "/v1/p/thing")
    assert iam.issued == ["token-0"]
    assert [s.headers.get("X-Auth-Token") for s in iam.server.calls("GET")] == ["token-0"] * 3
    assert gate_calls == ["show"] * 3


def test_token_request_is_project_scoped_by_id_or_name(iam):
    _token_auth(iam, PROJECT).token()
    _token_auth(iam, "cn-north-4").token()
    first, second = iam.token_bodies
    assert first["auth"]["scope"] == {"project": {"id": PROJECT}}
    assert second["auth"]["scope"] == {"project": {"name": "cn-north-4"}}
    user = first["auth"]["identity"]["password"]["user"]
    assert user == {"name": "demo", "password": "demo-password", "domain": {"name": "demo"}}


def test_a_revoked_token_is_refreshed_once_and_the_request_resent(iam):
    gate_calls: list[str] = []
    transport = _transport(iam, _token_auth(iam), gate_calls)
    transport.request("show", "GET", "/v1/p/thing")
    iam.valid.clear()  # revoke token-0 server-side
    response = transport.request("show", "GET", "/v1/p/thing")
    assert response.status_code == 200
    assert iam.issued == ["token-0", "token-1"]
    tokens = [s.headers.get("X-Auth-Token") for s in iam.server.calls("GET")]
    assert tokens == ["token-0", "token-0", "token-1"]
    assert gate_calls == ["show"] * 3, "the re-send passes the caller's gate too"


def test_the_resent_call_reports_its_answer_to_the_gate(iam):
    answered: list[str] = []

    def gate(api_class: str):
        return lambda: answered.append(api_class)  # the limiter re-stamps on the answer

    transport = Transport(iam.server.base_url, _token_auth(iam), timeout=(2, 5), before_call=gate)
    transport.request("show", "GET", "/v1/p/thing")
    iam.valid.clear()
    transport.request("show", "GET", "/v1/p/thing")

    assert answered == ["show"] * 3  # before: the re-send's answer was never reported


def test_a_post_refused_with_401_is_resent_once_with_its_body(iam):
    transport = _transport(iam, _token_auth(iam), [])
    auth = transport.session.auth
    auth.token()
    iam.valid.clear()
    transport.request("create", "POST", "/v1/p/things", json={"server": {"name": "x"}})
    posts = [seen for seen in iam.server.calls("POST") if seen.path == "/v1/p/things"]
    assert [p.body for p in posts] == [b'{"server": {"name": "x"}}'] * 2


def test_a_second_401_is_raised_not_retried_again(iam):
    gate_calls: list[str] = []
    transport = _transport(iam, _token_auth(iam), gate_calls)
    iam.valid = _NeverValid()
    with pytest.raises(AuthenticationError) as caught:
        transport.request("show", "GET", "/v1/p/thing")
    assert caught.value.error_code == "APIGW.0301"
    assert len(iam.server.calls("GET")) == 2
    assert gate_calls == ["show", "show"]


class _NeverValid(set):
    def add(self, item):
        pass


def test_an_expired_token_is_not_reused(iam):
    iam.lifetime = timedelta(seconds=-10)
    transport = _transport(iam, _token_auth(iam), [])
    transport.request("show", "GET", "/v1/p/thing")
    transport.request("show", "GET", "/v1/p/thing")
    assert iam.issued == ["token-0", "token-1"]


def test_iam_refusal_raises_authentication_error_without_the_password(iam):
    iam.iam_reply = Reply(
        401, {"error": {"code": 401, "message": "The username or password is wrong."}}
    )
    auth = _token_auth(iam)
    with pytest.raises(AuthenticationError) as caught:
        auth.token()
    assert "demo-password" not in str(caught.value)
    assert "demo-password" not in repr(caught.value)


def test_token_auth_never_shows_password_or_token(iam):
    auth = _token_auth(iam)
    token = auth.token()
    for text in (repr(auth), str(auth)):
        assert "demo-password" not in text
        assert token not in text
        assert "demo" in text


def test_concurrent_first_calls_fetch_one_token(iam):
    auth = _token_auth(iam)
    start = threading.Barrier(8)
    tokens: list[str] = []

    def first_call():
        start.wait()
        tokens.append(auth.token())

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert tokens == ["token-0"] * 8
    assert iam.issued == ["token-0"]
