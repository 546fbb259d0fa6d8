from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from clawpot.network import NetworkConfig, NetworkConfigError


def test_defaults_are_the_documented_ones() -> None:
    config = NetworkConfig()
    assert config.bridge == "clawpot-br0"
    assert config.subnet == IPv4Network("192.168.100.0/24")
    assert config.gateway == IPv4Address("192.168.100.1")
    assert config.dns_servers == (IPv4Address("192.168.100.1"),)
    assert config.bridge_mac == "06:00:c0:a8:64:01"
    assert config.pool_size == 253


def test_build_parses_strings_and_defaults_the_gateway_to_the_first_host() -> None:
    config = NetworkConfig.build(bridge="br-test", subnet="10.20.0.0/29", dns=("9.9.9.9",))
    assert config.gateway == IPv4Address("10.20.0.1")
    assert config.pool_size == 5
    assert config.dns_servers == (IPv4Address("9.9.9.9"),)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"subnet": "10.0.0.0/31"}, "too small"),
        ({"subnet": "10.0.0.1/24"}, "host bits set"),
        ({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "not a host address"),
        ({"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}, "not a host address"),
        ({"bridge": "a-bridge-name-too-long"}, "bridge name"),
        ({"bridge": "bad name"}, "bridge name"),
        ({"tap_prefix": "toolongpfx"}, "TAP prefix"),
        ({"tap_prefix": "cp-", "bridge": "cp-0123456789ab"}, "looks like one of the TAPs"),
        ({"table": "1bad"}, "table name"),
        ({"subnet": "not-a-subnet"}, "invalid network configuration"),
    ],
)
def test_bad_configuration_is_one_clear_error(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(NetworkConfigError, match=fragment):
        NetworkConfig.build(**kwargs)  # type: ignore[arg-type]


def test_smallest_usable_subnet_has_one_guest() -> None:
    assert NetworkConfig.build(subnet="10.0.0.0/30").pool_size == 1
