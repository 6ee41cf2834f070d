"""AK/SK signature verification (section 2.2 test vectors) and IAM tokens over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from simulator.auth import AuthFailure, canonical_query, canonical_uri, verify_signature
from simulator.wire import Request

AK = "AKEXAMPLE0000000000"
SK = "SKEXAMPLE0000000000000000000000000000000"
PROJECT = "0123456789abcdef0123456789abcdef"
HOST = "bms.cn-north-4.myhuaweicloud.com"


def signed_request(method, path, query, headers, body, signed, signature, ak=AK) -> Request:
    headers = {name.lower(): value for name, value in headers.items()}
    headers["authorization"] = (
        f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={signed}, Signature={signature}"
    )
    return Request(method, path, query, headers, body, "0" * 32)


def put_vector(**changes) -> Request:
    """The first test vector: a signed rename."""
    values = {
        "method": "PUT",
        "path": f"/v1/{PROJECT}/baremetalservers/53206ed0-56de-4d6b-b7ee-ffc62ca26f43",
        "query": "",
        "headers": {
            "Content-Type": "application/json;charset=UTF-8",
            "Host": HOST,
            "X-Project-Id": PROJECT,
            "X-Sdk-Date": "20240101T000000Z",
        },
        "body": b'{"server":{"name":"new-name"}}',
        "signed": "content-type;host;x-project-id;x-sdk-date",
        "signature": "1665ef781cb4a21e6f00d5e20d5ae0846db2418988655b3c412d93ab6744ffdb",
    }
    values.update(changes)
    return signed_request(**values)


def test_the_put_vector_verifies():
    assert verify_signature(put_vector(), {AK: SK}) == AK


def test_the_get_vector_with_a_query_verifies():
    request = signed_request(
        "GET",
        f"/v1/{PROJECT}/baremetalservers/detail",
        "name=bms-a&limit=10",
        {"Content-Type": "application/json", "Host": HOST, "X-Sdk-Date": "20240101T000000Z"},
        b"",
        "content-type;host;x-sdk-date",
        "95e49d0cd0c704b7a037de2f517ceac4dd28daeed8a18a5e9002db1c3dc04a49",
    )

    assert verify_signature(request, {AK: SK}) == AK


@pytest.mark.parametrize(
    "changes",
    [
        {"body": b'{"server":{"name":"other-name"}}'},
        {"method": "POST"},
        {"query": "x=1"},
        {"signature": "0" * 64},
        {"ak": "AKUNKNOWN0000000000"},
        {"signed": "content-type;host;x-project-id"},
    ],
)
def test_any_tampering_fails(changes):
    with pytest.raises(AuthFailure):
        verify_signature(put_vector(**changes), {AK: SK})


def test_a_stale_date_fails_the_skew_check():
    signed_at = datetime(2024, 1, 1, tzinfo=UTC)

    assert verify_signature(put_vector(), {AK: SK}, now=signed_at + timedelta(minutes=14))
    with pytest.raises(AuthFailure):
        verify_signature(put_vector(), {AK: SK}, now=signed_at + timedelta(minutes=16))


def test_canonical_uri_and_query_follow_the_sdk():
    assert canonical_uri("/v1/p/baremetalservers/detail") == "/v1/p/baremetalservers/detail/"
    assert canonical_uri("/v1/a%20b/") == "/v1/a%20b/"
    assert canonical_query("name=bms-a&limit=10&tags=a%2Cb") == "limit=10&name=bms-a&tags=a%2Cb"


def test_a_bad_signature_over_http_gets_the_gateway_401(simulator, http):
    headers = {
        "X-Sdk-Date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "Authorization": f"SDK-HMAC-SHA256 Access={simulator.ak}, "
        f"SignedHeaders=host;x-sdk-date, Signature={'0' * 64}",
    }
    url = f"{simulator.base_url}/v1/{simulator.project_id}/baremetalservers/detail"

    response = http.get(url, headers=headers, timeout=10)

    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == "APIGW.0301"
    assert body["error_msg"] == (
        "Incorrect IAM authentication information: verify aksk signature fail"
    )
    assert body["request_id"] == response.headers["X-Request-Id"]


def test_iam_tokens_are_issued_and_checked(simulator, http):
    url = f"{simulator.base_url}/v3/auth/tokens"
    identity = {
        "methods": ["password"],
        "password": {
            "user": {"name": "demo", "password": "demo-password", "domain": {"name": "demo"}}
        },
    }
    jobs_url = f"{simulator.base_url}/v1/{simulator.project_id}/baremetalservers/detail"

    issued = http.post(url, json={"auth": {"identity": identity}}, timeout=10)
    identity["password"]["user"]["password"] = "wrong"
    refused = http.post(url, json={"auth": {"identity": identity}}, timeout=10)
    token = issued.headers["X-Subject-Token"]

    assert issued.status_code == 201
    assert issued.json()["token"]["project"]["id"] == simulator.project_id
    assert refused.status_code == 401
    ok = http.get(jobs_url, headers={"X-Auth-Token": token}, timeout=10)
    assert ok.status_code == 200
    bad = http.get(jobs_url, headers={"X-Auth-Token": token + "x"}, timeout=10)
    assert (bad.status_code, bad.json()["error_code"]) == (401, "APIGW.0301")
    assert http.get(jobs_url, timeout=10).status_code == 401


def test_no_auth_mode_accepts_anonymous_calls(simulator_factory, http):
    simulator = simulator_factory(auth=False)
    url = f"{simulator.base_url}/v1/{simulator.project_id}/baremetalservers/detail"

    assert http.get(url, timeout=10).status_code == 200
