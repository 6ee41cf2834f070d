"""Counting create calls: what one ``count`` create could make together, and what not."""

from __future__ import annotations

import pytest

from models.spec import parse_batch
from tasks.grouping import count_create_calls, group_key, plan_groups
from tests.factories import batch, server


def bodies(*servers: dict) -> list[dict]:
    return [s.create_body for s in parse_batch(batch(*servers)).expand()]


def test_a_count_entry_is_one_call_and_named_servers_are_one_each():
    planned = bodies(server(name="web", count=3), server(name="db-a"), server(name="db-b"))

    assert plan_groups(planned, 100) == [[0, 1, 2], [3], [4]]
    assert count_create_calls(planned, 100).grouped == 3
    assert count_create_calls(planned, 100).one_by_one == 5


def test_a_group_is_cut_at_the_group_max():
    planned = bodies(server(name="web", count=100))

    assert [len(call) for call in plan_groups(planned, 24)] == [24, 24, 24, 24, 4]
    assert count_create_calls(planned, 100).grouped == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"tags": None, "server_tags": [{"key": "role", "value": "other"}]},
        {"flavorRef": "physical.s4.large"},
        {"availability_zone": "cn-north-4b"},
    ],
)
def test_bodies_that_differ_beyond_the_name_do_not_share_a_call(changes):
    # Two hand-written servers named as a count create would name them, one body different.
    planned = bodies(server(name="web-0000"), server(name="web-0001", **changes))

    assert plan_groups(planned, 100) == [[0], [1]]


def test_hand_written_count_names_with_identical_bodies_do_share_a_call():
    planned = bodies(server(name="web-0000", tags=["a"]), server(name="web-0001", tags=["b"]))

    assert plan_groups(planned, 100) == [[0, 1]]  # orchestrator tags are not in the body


@pytest.mark.parametrize(
    "names",
    [
        ["web-0001", "web-0002"],  # a count create starts at 0000
        ["web-0000", "web-0002"],  # and has no gap
        ["web-0000", "app-0001"],  # one base name
    ],
)
def test_names_a_count_create_would_not_give_do_not_share_a_call(names):
    planned = bodies(*(server(name=name) for name in names))

    assert len(plan_groups(planned, 100)) == 2


def test_a_fixed_ip_or_an_existing_eip_is_never_grouped():
    nic = {"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1", "ip_address": "192.168.1.50"}
    fixed = bodies(server(name="web-0000", nics=[nic]))[0]
    eip = bodies(server(name="web-0000", publicip={"id": "eip-1"}))[0]

    assert group_key(fixed) is None and group_key(eip) is None
    assert group_key(bodies(server(name="web-0000"))[0]) is not None


def test_the_group_max_is_bounded_by_the_api():
    with pytest.raises(ValueError):
        plan_groups([], 101)
