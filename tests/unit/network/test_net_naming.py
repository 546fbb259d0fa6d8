from __future__ import annotations

from ipaddress import IPv4Address

from clawpot.network.naming import mac_for_address, tap_name_for, tap_name_pattern, valid_ifname


def test_tap_name_is_stable_fills_ifnamsiz_and_is_recognised() -> None:
    name = tap_name_for("vm-7f3a", "cp-")
    assert name == tap_name_for("vm-7f3a", "cp-")
    assert len(name) == 15 and name.startswith("cp-") and valid_ifname(name)
    assert tap_name_pattern("cp-").match(name)


def test_tap_names_differ_between_vms_and_never_exceed_15_characters() -> None:
    names = {tap_name_for(f"vm-{i}", "cp-") for i in range(2000)}
    assert len(names) == 2000
    long_id = "x" * 256
    assert len(tap_name_for(long_id, "clawpt-")) == 15


def test_pattern_rejects_lookalikes() -> None:
    pattern = tap_name_pattern("cp-")
    for other in ("cp-0123", "cp-0123456789abc", "cp-0123456789AB", "xcp-123456789ab", "clawpot-br0"):
        assert not pattern.match(other), other


def test_mac_is_locally_administered_unicast_and_encodes_the_address() -> None:
    assert mac_for_address(IPv4Address("192.168.100.2")) == "06:00:c0:a8:64:02"
    assert mac_for_address(IPv4Address("10.0.0.255")) == "06:00:0a:00:00:ff"
    first_octet = int(mac_for_address(IPv4Address("1.2.3.4")).split(":")[0], 16)
    assert first_octet & 0b10 and not first_octet & 0b01
