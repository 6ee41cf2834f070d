"""The simulator's subnets hand out the lowest free host address from the tenth on, whatever
was handed out, released or asked for by name before."""

from __future__ import annotations

import ipaddress

import pytest

from simulator.catalog import Subnet


def hand_out_all(subnet: Subnet, most: int = 400) -> list[str]:
    addresses = []
    while len(addresses) < most and (address := subnet.allocate()) is not None:
        addresses.append(address)
    return addresses


@pytest.mark.parametrize(
    "cidr", ["10.32.0.0/18", "192.168.1.0/24", "10.0.0.0/28", "10.0.0.0/31", "fd00::/120"]
)
def test_addresses_come_in_the_order_of_the_subnets_hosts(cidr):
    hosts = [str(host) for host in ipaddress.ip_network(cidr).hosts()][9:409]

    assert hand_out_all(Subnet(id="s", name="s", cidr=cidr)) == hosts


def test_a_released_address_is_the_next_one_handed_out_then_the_walk_goes_on():
    subnet = Subnet(id="s", name="s", cidr="192.168.1.0/24")
    first, second, third = (subnet.allocate() for _ in range(3))

    subnet.release(second)

    assert (first, second, third) == ("192.168.1.10", "192.168.1.11", "192.168.1.12")
    assert subnet.allocate() == second
    assert subnet.allocate() == "192.168.1.13"


def test_an_address_asked_for_by_name_is_skipped_by_the_walk():
    subnet = Subnet(id="s", name="s", cidr="192.168.1.0/24")
    assert subnet.allocate("192.168.1.11") == "192.168.1.11"
    assert subnet.allocate("192.168.1.5") == "192.168.1.5"  # below the tenth: only by name

    assert [subnet.allocate() for _ in range(3)] == ["192.168.1.10", "192.168.1.12", "192.168.1.13"]
    subnet.release("192.168.1.5")  # below the walk's start: it never hands that one out
    assert subnet.allocate() == "192.168.1.14"


def test_a_subnet_loaded_with_its_used_addresses_hands_out_the_lowest_free_one():
    # As the saved state is loaded (simulator.persist): the used set, nothing else.
    used = {f"192.168.1.{n}" for n in range(10, 60) if n != 33}

    subnet = Subnet(id="s", name="s", cidr="192.168.1.0/24", used=used)

    assert subnet.allocate() == "192.168.1.33"
    assert subnet.allocate() == "192.168.1.60"


def test_a_full_subnet_hands_out_nothing_until_one_is_released():
    subnet = Subnet(id="s", name="s", cidr="10.0.0.0/28")  # 14 hosts, 5 from the tenth on
    handed = hand_out_all(subnet)
    assert len(handed) == 5 and subnet.allocate() is None

    subnet.release(handed[2])

    assert subnet.allocate() == handed[2]
    assert subnet.allocate() is None
