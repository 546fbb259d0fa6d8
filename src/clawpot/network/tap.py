"""Per-VM TAP devices: persistent, named after the VM, attached to the bridge, deleted by exact name.

A TAP is created persistent (TUNSETPERSIST) so it exists before the VMM opens it and survives the
VMM process; Firecracker opens it by name, and an unprivileged QEMU gets an fd of it (``open_tap``,
opened as root: ``/dev/net/tun`` may be 0600 root). Its alias records the VM id, so an operator
(and reconcile) can tell whose it is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from clawpot.network.config import NetworkConfig
from clawpot.network.errors import LinkError, ToolMissing
from clawpot.network.links import LinkInfo, delete_link, find_link, list_links, netlink_errors
from clawpot.network.naming import tap_name_pattern

ALIAS_PREFIX = "clawpot:"
IFALIASZ_MAX = 255
TUN_DEVICE = "/dev/net/tun"
# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


def open_tap(name: str) -> int:
    """An fd of the existing TAP ``name``, as a VMM would open it (no packet info, with the virtio-net
    header QEMU uses when it opens a TAP itself). Raises ``OSError``."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, ifreq)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_tap(ipr: Any, config: NetworkConfig, name: str, bridge_index: int, vm_id: str) -> int:
    """The TAP ``name`` exists, is enslaved to the bridge and up; returns its ifindex."""
    link = find_link(ipr, name)
    if link is None:
        options: dict[str, Any] = {"mode": "tap", "ifr": {"no_pi": True}}
        if config.tap_uid is not None:
            options["uid"] = config.tap_uid
        if config.tap_gid is not None:
            options["gid"] = config.tap_gid
        with netlink_errors(f"create TAP {name}"):
            try:
                ipr.link("add", ifname=name, kind="tuntap", **options)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            except OSError as exc:  # pyroute2 creates TAPs with ioctl on /dev/net/tun
                if exc.errno == errno.ENOENT:
                    raise ToolMissing(
                        f"create TAP {name}: /dev/net/tun is missing (kernel CONFIG_TUN)"
                    ) from None
                raise
        link = find_link(ipr, name)
        if link is None:
            raise LinkError(f"TAP {name} vanished right after it was created")
    # An existing port of our bridge is accepted whatever its kind (tests plug veth pairs in its place).
    if link.kind != "tun" and link.master != bridge_index:
        raise LinkError(f"interface {name} exists and is a {link.kind or 'plain device'}, not a TAP")
    with netlink_errors(f"attach TAP {name} to bridge {config.bridge}"):
        alias = (ALIAS_PREFIX + vm_id)[:IFALIASZ_MAX]
        ipr.link("set", index=link.index, master=bridge_index, ifalias=alias, state="up")
    return link.index


def delete_tap(ipr: Any, name: str) -> bool:
    return delete_link(ipr, name)


def clawpot_taps(ipr: Any, config: NetworkConfig) -> list[LinkInfo]:
    """Links that are Clawpot's TAPs: exactly ``<prefix><hex>`` and a TAP, ours by alias or bridge."""
    pattern = tap_name_pattern(config.tap_prefix)
    links = list_links(ipr)
    bridge = next((link.index for link in links if link.name == config.bridge), None)
    return [
        link
        for link in links
        if pattern.match(link.name)
        and (
            link.kind == "tun"
            or (link.alias or "").startswith(ALIAS_PREFIX)
            or (bridge is not None and link.master == bridge)
        )
    ]
