"""``NetworkConfig``: the bridge, subnet and names one Clawpot server uses, validated up front."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

from clawpot import limits
from clawpot.network.errors import NetworkConfigError
from clawpot.network.naming import mac_for_address, tap_name_pattern, valid_ifname

DEFAULT_BRIDGE = limits.DEFAULT_BRIDGE
DEFAULT_SUBNET = IPv4Network(limits.DEFAULT_SUBNET)
DEFAULT_GATEWAY = IPv4Address("192.168.100.1")
DEFAULT_TAP_PREFIX = "cp-"
DEFAULT_TABLE = "clawpot"
# Leaves 8 hex digits (32 bits) of the VM id's hash in a TAP name at the shortest.
MAX_TAP_PREFIX = 7
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class NetworkConfig:
    """Where guests live. Build one from strings with ``NetworkConfig.build``.

    ``dns`` empty means the gateway: the firewall lets guests reach the gateway on port 53 only.
    ``tap_uid``/``tap_gid`` own the TAPs when the VMM runs unprivileged (Firecracker's jailer).
    ``restore_ip_forward``: teardown puts net.ipv4.ip_forward back to what it was before setup.
    """

    bridge: str = DEFAULT_BRIDGE
    subnet: IPv4Network = DEFAULT_SUBNET
    gateway: IPv4Address = DEFAULT_GATEWAY
    tap_prefix: str = DEFAULT_TAP_PREFIX
    table: str = DEFAULT_TABLE
    dns: tuple[IPv4Address, ...] = ()
    tap_uid: int | None = None
    tap_gid: int | None = None
    restore_ip_forward: bool = True

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise NetworkConfigError("invalid network configuration: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        found = []
        if not valid_ifname(self.bridge):
            found.append(
                f"bridge name {self.bridge!r} is not a valid interface name (1-15 of [A-Za-z0-9_.-])"
            )
        if not (0 < len(self.tap_prefix) <= MAX_TAP_PREFIX) or not valid_ifname(self.tap_prefix):
            found.append(f"TAP prefix {self.tap_prefix!r} must be 1-{MAX_TAP_PREFIX} of [A-Za-z0-9_.-]")
        elif tap_name_pattern(self.tap_prefix).match(self.bridge):
            found.append(f"bridge name {self.bridge!r} looks like one of the TAPs ({self.tap_prefix}<hex>)")
        if self.subnet.prefixlen > 30:
            found.append(f"subnet {self.subnet} is too small: it needs room for a gateway and a guest (/30)")
        if self.gateway not in self.subnet or self.gateway in (
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            found.append(f"gateway {self.gateway} is not a host address of {self.subnet}")
        if not _TABLE_RE.match(self.table):
            found.append(f"nftables table name {self.table!r} must match {_TABLE_RE.pattern}")
        return found

    @classmethod
    def build(
        cls,
        *,
        bridge: str = DEFAULT_BRIDGE,
        subnet: str | IPv4Network = DEFAULT_SUBNET,
        gateway: str | IPv4Address | None = None,
        tap_prefix: str = DEFAULT_TAP_PREFIX,
        table: str = DEFAULT_TABLE,
        dns: tuple[str | IPv4Address, ...] = (),
        tap_uid: int | None = None,
        tap_gid: int | None = None,
        restore_ip_forward: bool = True,
    ) -> NetworkConfig:
        """Parse user-facing values (e.g. CLI flags); the gateway defaults to the subnet's first host."""
        try:
            net = IPv4Network(subnet, strict=True)
            gw = IPv4Address(gateway) if gateway is not None else IPv4Address(int(net.network_address) + 1)
            servers = tuple(IPv4Address(s) for s in dns)
        except (AddressValueError, NetmaskValueError, ValueError) as exc:
            raise NetworkConfigError(f"invalid network configuration: {exc}") from None
        return cls(
            bridge=bridge,
            subnet=net,
            gateway=gw,
            tap_prefix=tap_prefix,
            table=table,
            dns=servers,
            tap_uid=tap_uid,
            tap_gid=tap_gid,
            restore_ip_forward=restore_ip_forward,
        )

    @property
    def dns_servers(self) -> tuple[IPv4Address, ...]:
        return self.dns or (self.gateway,)

    @property
    def bridge_mac(self) -> str:
        # Pinned: a bridge otherwise takes the lowest MAC of its ports, changing under the guests' ARP caches.
        return mac_for_address(self.gateway)

    @property
    def pool_size(self) -> int:
        """Guest addresses available: the subnet minus network, broadcast and gateway."""
        return self.subnet.num_addresses - 3
