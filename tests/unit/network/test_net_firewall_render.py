"""The rendered nft script (pure). That nft accepts it and that it isolates is shown in
tests/integration/test_network_*.py, inside network namespaces."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from clawpot.network import NetworkConfig, NetworkSlot, ToolMissing
from clawpot.network.firewall import Firewall, render, render_removal

CONFIG = NetworkConfig()


def slot(vm_id: str, last_octet: int, allow_peers: bool = False) -> NetworkSlot:
    return NetworkSlot.derive(
        CONFIG, vm_id, IPv4Address(f"192.168.100.{last_octet}"), allow_peers=allow_peers
    )


def test_script_replaces_both_tables_in_one_transaction() -> None:
    script = render(CONFIG, [])
    lines = script.splitlines()
    for family in ("inet", "bridge"):
        create, delete = lines.index(f"table {family} clawpot"), lines.index(f"delete table {family} clawpot")
        assert create < delete < lines.index(f"table {family} clawpot {{")
    assert "elements" not in script  # empty sets carry no (invalid) empty element list


def test_nat_and_host_isolation_name_the_bridge_subnet_and_gateway() -> None:
    config = NetworkConfig.build(bridge="br-x", subnet="10.5.0.0/24", table="cp_test")
    script = render(config, [])
    assert 'ip saddr 10.5.0.0/24 oifname != "br-x" masquerade' in script
    assert 'iifname "br-x" ip daddr 10.5.0.1 meta l4proto { tcp, udp } th dport 53 accept' in script
    assert 'iifname "br-x" reject with icmpx admin-prohibited' in script
    assert "table inet cp_test {" in script and "table bridge cp_test {" in script


def test_ports_peers_and_bindings_come_from_the_slots() -> None:
    a, b, c = slot("a", 2), slot("b", 3, allow_peers=True), slot("c", 4, allow_peers=True)
    script = render(CONFIG, [a, b, c])
    ports, peers = _elements(script, "ports"), _elements(script, "peers")
    assert ports == sorted(f'"{s.tap_name}"' for s in (a, b, c))
    assert peers == sorted(f'"{s.tap_name}"' for s in (b, c))
    assert f'"{a.tap_name}" . 06:00:c0:a8:64:02' in _elements(script, "port_macs")
    assert f'"{c.tap_name}" . 192.168.100.4' in _elements(script, "port_addrs")


def test_rendering_is_deterministic_whatever_the_order() -> None:
    slots = [slot(f"vm-{i}", 2 + i, allow_peers=i % 2 == 0) for i in range(10)]
    assert render(CONFIG, slots) == render(CONFIG, list(reversed(slots)))


def test_removal_deletes_only_clawpots_tables() -> None:
    assert render_removal(CONFIG).splitlines() == [
        "table inet clawpot",
        "delete table inet clawpot",
        "table bridge clawpot",
        "delete table bridge clawpot",
    ]


def test_missing_nft_binary_says_what_to_install() -> None:
    with pytest.raises(ToolMissing, match="install the nftables package"):
        Firewall(CONFIG, nft="/nonexistent/nft").apply([])


def _elements(script: str, set_name: str) -> list[str]:
    match = re.search(rf"\tset {set_name} {{\n\t\ttype [^\n]*\n(?:\t\telements = {{ (.*) }}\n)?\t}}", script)
    assert match, f"set {set_name} not rendered"
    return [item.strip() for item in (match.group(1) or "").split(",") if item.strip()]
