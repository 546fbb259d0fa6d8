from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from clawpot.network import NetworkConfig, NetworkSlot
from clawpot.network.naming import tap_name_for
from clawpot.vmm.spec import NetworkInterface


def test_slot_derives_everything_from_the_vm_id_and_address() -> None:
    slot = NetworkSlot.derive(NetworkConfig(), "vm-1", IPv4Address("192.168.100.2"))
    assert slot.tap_name == tap_name_for("vm-1", "cp-")
    assert slot.mac == "06:00:c0:a8:64:02"
    assert slot.cidr == "192.168.100.2/24"
    assert str(slot.netmask) == "255.255.255.0"
    assert slot.gateway == IPv4Address("192.168.100.1")
    assert slot.bridge == "clawpot-br0"
    assert not slot.allow_peers


def test_kernel_ip_argument_carries_address_gateway_mask_device_and_dns() -> None:
    slot = NetworkSlot.derive(NetworkConfig(), "vm-1", IPv4Address("192.168.100.2"))
    assert slot.kernel_ip_arg() == "ip=192.168.100.2::192.168.100.1:255.255.255.0::eth0:off:192.168.100.1"
    assert slot.kernel_ip_arg(hostname="box") == (
        "ip=192.168.100.2::192.168.100.1:255.255.255.0:box:eth0:off:192.168.100.1"
    )
    with pytest.raises(ValueError, match="must not contain"):
        slot.kernel_ip_arg(hostname="a:b")
    assert slot.resolv_conf() == "nameserver 192.168.100.1\n"


def test_custom_dns_servers_reach_the_guest() -> None:
    config = NetworkConfig.build(subnet="10.1.0.0/24", dns=("10.1.0.53", "10.1.0.54", "10.1.0.55"))
    slot = NetworkSlot.derive(config, "vm", IPv4Address("10.1.0.9"))
    assert slot.kernel_ip_arg().endswith(":eth0:off:10.1.0.53:10.1.0.54")  # the kernel takes two
    assert slot.resolv_conf().count("nameserver") == 3


def test_interface_is_the_vmm_spec_nic() -> None:
    slot = NetworkSlot.derive(NetworkConfig(), "vm-1", IPv4Address("192.168.100.9"))
    assert slot.interface() == NetworkInterface(
        tap_name=slot.tap_name, mac="06:00:c0:a8:64:09", iface_id="eth0"
    )
