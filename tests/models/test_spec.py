"""The request spec: one valid and several invalid cases per rule, each error naming its field."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from models.spec import SpecError, deep_merge, field_path, load_batch_file, parse_batch
from tests.factories import batch, server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch.yaml"


def errors_of(data) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_batch(data)
    return dict(caught.value.errors)


def assert_rejected(data, path: str, fragment: str = "") -> None:
    errors = errors_of(data)
    assert path in errors, f"expected an error at {path}, got {errors}"
    assert fragment.lower() in errors[path].lower()


def test_valid_server_passes_and_expands_to_one_create_body():
    parsed = parse_batch(batch(server(tags=["web"], attach_volumes=[{"volume_id": "v1"}])))
    (one,) = parsed.expand()
    assert one.name == "bms-web"
    assert one.create_body["count"] == 1
    assert "tags" not in one.create_body and "attach_volumes" not in one.create_body
    assert one.attach_volumes == [{"volume_id": "v1"}]
    assert one.tags == ["web"]


def test_count_expands_to_numbered_names_like_the_api():
    names = [s.name for s in parse_batch(batch(server(count=3))).expand()]
    assert names == ["bms-web-0000", "bms-web-0001", "bms-web-0002"]


def test_defaults_merge_into_each_server_and_the_server_wins():
    data = {
        "name": "b",
        "defaults": {**server(name=None), "metadata": {"op_svc_userid": "u", "team": "a"}},
        "servers": [{"name": "one"}, {"name": "two", "metadata": {"team": "b"}}],
    }
    parsed = parse_batch(data)
    assert [s.metadata for s in parsed.servers] == [
        {"op_svc_userid": "u", "team": "a"},
        {"op_svc_userid": "u", "team": "b"},
    ]
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_field_path_format():
    assert field_path(("servers", 3, "nics", 0, "subnet_id")) == "servers[3].nics[0].subnet_id"


def test_error_path_points_into_the_nested_field():
    bad_nic = server(nics=[{"subnet_id": "s1"}, {"ip_address": "10.0.0.5"}])
    assert_rejected(batch(server(), bad_nic), "servers[1].nics[1].subnet_id", "required")


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"name": ""}, "servers[0].name", "at least 1"),
        ({"name": "x" * 64}, "servers[0].name", "at most 63"),
        ({"name": "bad name!"}, "servers[0].name", "only CJK"),
        ({"name": "x" * 59, "count": 2}, "servers[0].name", "58"),
        ({"imageRef": None}, "servers[0].imageRef", "required"),
        ({"flavorRef": ""}, "servers[0].flavorRef", "at least 1"),
        ({"vpcid": None}, "servers[0].vpcid", "required"),
        ({"availability_zone": None}, "servers[0].availability_zone", "required"),
        ({"nics": []}, "servers[0].nics", "at least 1"),
        ({"nics": [{"subnet_id": "a"}] * 3}, "servers[0].nics", "at most 2"),
        (
            {"nics": [{"subnet_id": "a", "ip_address": "10.0.0.1"}], "count": 2},
            "servers[0].nics[0].ip_address",
            "count > 1",
        ),
        ({"key_name": None}, "servers[0].key_name", "login mode"),
        ({"adminPass": "Secret-pass-1"}, "servers[0].adminPass", "use key_name"),
        ({"metadata": {}}, "servers[0].metadata", "op_svc_userid"),
        ({"metadata": {"op_svc_userid": "u", "k": "v" * 256}}, "servers[0].metadata.k", "255"),
        (
            {"metadata": {"op_svc_userid": "u", "admin_pass": "x"}},
            "servers[0].metadata",
            "passwords",
        ),
        ({"count": 0}, "servers[0].count", "greater than or equal to 1"),
        ({"count": 101}, "servers[0].count", "less than or equal to 100"),
        ({"root_volume": {"volumetype": "SSD", "size": 39}}, "servers[0].root_volume.size", "40"),
        (
            {"root_volume": {"volumetype": "NVME", "size": 50}},
            "servers[0].root_volume.volumetype",
            "",
        ),
        (
            {"data_volumes": [{"volumetype": "SAS", "size": 5}]},
            "servers[0].data_volumes[0].size",
            "10",
        ),
        (
            {"data_volumes": [{"volumetype": "SAS", "size": 10}] * 60},
            "servers[0].data_volumes",
            "at most 60 disks",
        ),
        (
            {"server_tags": [{"key": "a=b", "value": "x"}]},
            "servers[0].server_tags[0].key",
            "must not contain",
        ),
        (
            {"server_tags": [{"key": "k", "value": "v" * 44}]},
            "servers[0].server_tags[0].value",
            "43",
        ),
        (
            {"server_tags": [{"key": f"k{i}", "value": "v"} for i in range(10)]},
            "servers[0].server_tags",
            "at most 9",
        ),
        ({"server_tags": [{"key": "k"}, {"key": "k"}]}, "servers[0].server_tags", "unique"),
        ({"tags": [".hidden"]}, "servers[0].tags", "start with '.'"),
        ({"tags": ["a/b"]}, "servers[0].tags", "'/'"),
        ({"tags": ["x" * 81]}, "servers[0].tags[0]", "80"),
        ({"tags": ["__type_baremetal"]}, "servers[0].tags", "cloud's own"),
        ({"tags": ["a", "a"]}, "servers[0].tags", "unique"),
        ({"user_data": "not base64!"}, "servers[0].user_data", "base64"),
        (
            {"user_data": base64.b64encode(b"x" * (32 * 1024 + 1)).decode()},
            "servers[0].user_data",
            "32768",
        ),
        (
            {
                "extendparam": {
                    "chargingMode": "prePaid",
                    "periodType": "month",
                    "periodNum": 12,
                    "isAutoPay": "true",
                }
            },
            "servers[0].extendparam",
            "periodNum",
        ),
        (
            {"extendparam": {"chargingMode": "prePaid", "periodType": "month", "periodNum": 1}},
            "servers[0].extendparam",
            "isAutoPay",
        ),
        ({"publicip": {}}, "servers[0].publicip", "exactly one"),
        (
            {
                "publicip": {
                    "eip": {
                        "iptype": "5_bgp",
                        "bandwidth": {"sharetype": "PER"},
                        "extendparam": {"chargingMode": "postPaid"},
                    }
                }
            },
            "servers[0].publicip.eip.bandwidth",
            "size is required",
        ),
        ({"publicip": {"id": "eip-1"}, "count": 2}, "servers[0].publicip.id", "count > 1"),
        (
            {"attach_volumes": [{"volume_id": "v"}], "count": 2},
            "servers[0].attach_volumes",
            "count 1",
        ),
        (
            {"attach_volumes": [{"volume_id": "v"}, {"volume_id": "v"}]},
            "servers[0].attach_volumes",
            "only once",
        ),
        (
            {"attach_volumes": [{"volume_id": "v", "device": "/dev/sda"}]},
            "servers[0].attach_volumes[0].device",
            "pattern",
        ),
        (
            {"schedulerHints": {"dec_baremetal": "exclusive"}},
            "servers[0].schedulerHints.dec_baremetal",
            "",
        ),
        ({"flavour": "typo"}, "servers[0].flavour", "not permitted"),
    ],
)
def test_invalid_field_is_named(changes, path, fragment):
    assert_rejected(batch(server(**changes)), path, fragment)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "中文-name_1.x"},
        {"nics": [{"subnet_id": "a", "ip_address": "10.0.0.4"}, {"subnet_id": "b"}]},
        {"count": 100, "name": "x" * 58},
        {
            "root_volume": {"volumetype": "SSD", "size": 40},
            "data_volumes": [{"volumetype": "SAS", "size": 32768}],
        },
        {"server_tags": [{"key": f"k{i}", "value": "v"} for i in range(9)]},
        {"tags": [f"t{i}" for i in range(49)]},
        {"user_data": base64.b64encode(b"#!/bin/sh\necho hi\n").decode()},
        {
            "extendparam": {
                "chargingMode": "prePaid",
                "periodType": "year",
                "periodNum": 1,
                "isAutoPay": "true",
            }
        },
        {
            "publicip": {
                "eip": {
                    "iptype": "5_bgp",
                    "bandwidth": {"sharetype": "PER", "size": 10},
                    "extendparam": {"chargingMode": "postPaid"},
                }
            }
        },
        {"attach_volumes": [{"volume_id": "v1", "device": "/dev/sdb"}, {"volume_id": "v2"}]},
        {"security_groups": [{"id": "sg-1"}], "schedulerHints": {"dec_baremetal": "dedicate"}},
    ],
)
def test_valid_variants_pass(changes):
    parse_batch(batch(server(**changes)))


def test_a_volume_listed_by_two_servers_names_the_second():
    first = server(attach_volumes=[{"volume_id": "v1"}])
    second = server(name="other", attach_volumes=[{"volume_id": "v2"}, {"volume_id": "v1"}])
    assert_rejected(batch(first, second), "servers[1].attach_volumes[1].volume_id", "servers[0]")


def test_every_bad_field_is_reported_at_once():
    errors = errors_of(batch(server(name="bad name!"), server(flavorRef="", count=0)))
    assert {"servers[0].name", "servers[1].flavorRef", "servers[1].count"} <= set(errors)


@pytest.mark.parametrize(
    ("data", "path"),
    [({"servers": [server()]}, "name"), ({"name": "b", "servers": []}, "servers"), ([], "<root>")],
)
def test_batch_level_errors(data, path):
    assert path in errors_of(data)


def test_unparsable_file_is_a_spec_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="does not parse"):
        load_batch_file(broken)


def test_the_shipped_example_is_valid():
    parsed = load_batch_file(EXAMPLE)
    expanded = parsed.expand()
    assert 8 <= len(expanded) <= 14
    assert any(s.attach_volumes for s in expanded)
    assert any(s.tags for s in expanded)
