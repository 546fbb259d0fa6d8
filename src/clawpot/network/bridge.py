"""The bridge guests hang off: created idempotently, with the gateway address, a pinned MAC, and
IPv4 forwarding switched on for the namespace (remembering what it was, so teardown can restore it).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from clawpot.network.config import NetworkConfig
from clawpot.network.errors import LinkError
from clawpot.network.links import delete_link, find_link, netlink_errors

# Per network namespace: the file shows the namespace of the process that opens it.
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def ensure_bridge(ipr: Any, config: NetworkConfig) -> int:
    """Bridge up, MAC pinned, gateway address present; returns its ifindex. Safe to repeat or race."""
    name = config.bridge
    link = find_link(ipr, name)
    if link is None:
        with netlink_errors(f"create bridge {name}"):
            try:
                ipr.link("add", ifname=name, kind="bridge", address=config.bridge_mac)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # another process created it first
                    raise
        link = find_link(ipr, name)
        if link is None:
            raise LinkError(f"bridge {name} vanished right after it was created")
    if link.kind != "bridge":
        raise LinkError(
            f"interface {name} exists and is a {link.kind or 'plain device'}, not a bridge: "
            "remove it or configure another bridge name"
        )
    with netlink_errors(f"configure bridge {name}"):
        if (link.mac or "").lower() != config.bridge_mac:
            ipr.link("set", index=link.index, address=config.bridge_mac)
        if not _has_address(ipr, link.index, config):
            try:
                ipr.addr(
                    "add", index=link.index, address=str(config.gateway), prefixlen=config.subnet.prefixlen
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        ipr.link("set", index=link.index, state="up")
    return link.index


def _has_address(ipr: Any, index: int, config: NetworkConfig) -> bool:
    for msg in ipr.get_addr(index=index, family=socket.AF_INET):
        if msg.get_attr("IFA_ADDRESS") == str(config.gateway) and msg["prefixlen"] == config.subnet.prefixlen:
            return True
    return False


def delete_bridge(ipr: Any, config: NetworkConfig) -> bool:
    """Delete the bridge (its address and subnet route go with it); refuses to delete a non-bridge."""
    link = find_link(ipr, config.bridge)
    if link is None:
        return False
    if link.kind != "bridge":
        raise LinkError(f"interface {config.bridge} is not a bridge; not deleting it")
    return delete_link(ipr, config.bridge)


def read_ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


def write_ip_forward(value: str) -> None:
    try:
        IP_FORWARD.write_text(value + "\n")
    except OSError as exc:
        raise LinkError(f"set {IP_FORWARD} to {value}: {exc.strerror} (needs root)") from None


def set_route_localnet(bridge: str) -> None:
    """Let the kernel route a 127.0.0.0/8 source out of the bridge (the DNAT of a port published on
    loopback). Per interface, gone with the bridge. Guests gain nothing: the ruleset drops whatever
    they send to 127.0.0.0/8 (``firewall``: chain prerouting) before routing sees it."""
    path = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    try:
        path.write_text("1\n")
    except OSError as exc:
        raise LinkError(f"set {path} to 1: {exc.strerror} (needs root)") from None
