"""The guest kernel command line."""

from __future__ import annotations

import pytest

from clawpot.assets.bootargs import BASE_ARGS, TCG_ARGS, GuestIp, guest_cmdline


def test_minimal_cmdline_is_the_base() -> None:
    line = guest_cmdline(overlay_device=None)
    assert line == BASE_ARGS
    for word in ("console=ttyS0", "panic=1", "pci=off", "init=/sbin/clawpot-init", "root=/dev/vda", "ro"):
        assert word in line.split()


def test_full_cmdline() -> None:
    line = guest_cmdline(
        overlay_device="/dev/vdb",
        hostname="vm-1",
        ip=GuestIp("192.168.100.2", "192.168.100.1"),
        dns="192.168.100.1,192.168.100.3",
        tcg=True,
        extra="quiet",
    )
    assert line == (
        f"{BASE_ARGS} clawpot.overlay=/dev/vdb clawpot.hostname=vm-1 "
        "ip=192.168.100.2::192.168.100.1:255.255.255.0:vm-1:eth0:off "
        f"clawpot.dns=192.168.100.1,192.168.100.3 {TCG_ARGS} quiet"
    )


def test_ip_without_hostname_leaves_the_field_empty() -> None:
    line = guest_cmdline(overlay_device=None, ip=GuestIp("10.1.0.2", "10.1.0.1", "255.255.0.0", "eth1"))
    assert "ip=10.1.0.2::10.1.0.1:255.255.0.0::eth1:off" in line.split()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "two words"},
        {"hostname": "a:b"},
        {"hostname": ""},
        {"overlay_device": "/dev/vdb init=/bin/sh"},
        {"dns": "not-an-ip"},
    ],
)
def test_values_that_would_corrupt_the_cmdline_are_refused(kwargs: dict[str, str]) -> None:
    args: dict[str, str | None] = {"overlay_device": None, **kwargs}
    with pytest.raises(ValueError):
        guest_cmdline(**args)  # type: ignore[arg-type]


def test_bad_guest_ip_is_refused() -> None:
    with pytest.raises(ValueError, match="address"):
        GuestIp("192.168.100.300", "192.168.100.1")
    with pytest.raises(ValueError, match="iface"):
        GuestIp("192.168.100.2", "192.168.100.1", iface="eth 0")
