"""What one VM may reach and what reaches it: ``EgressPolicy`` and ``PortForward`` (pure, validated).

``EgressPolicy`` (``create --allow-out/--deny-out/--no-internet``):

- ``no_internet``: nothing the guest sends is forwarded, and the gateway's DNS forwarder refuses it
  (DNS would otherwise carry data out). Published ports still answer: that traffic comes in.
- ``deny_out``: CIDRs dropped, domains refused by the DNS forwarder; checked first.
- ``allow_out`` non-empty: default deny. Only these CIDRs, plus the addresses the DNS forwarder
  answered for these domains (pinned for their TTL), are reachable, and only these domains resolve.
- neither: the default: everything except what isolation forbids anywhere (docs/networking.md).

A domain covers itself and its subdomains (``example.com`` covers ``api.example.com``).

``PortForward`` (``create --publish [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]``): a DNAT from the host's
address and port to the guest's, loopback unless a host address is given.
"""

from __future__ import annotations

import errno
import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from clawpot import limits
from clawpot.errors import quote
from clawpot.network.errors import NetworkConfigError, PortInUse

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
PROTOCOLS = ("tcp", "udp")


class PolicyError(NetworkConfigError):
    """An entry of a policy or a port forward is malformed (the server maps it to INVALID_ARGUMENT)."""


def normalize_domain(text: str) -> str | None:
    """``text`` as a lower-case domain without the trailing dot, or None if it is not one."""
    name = text.strip().lower().removesuffix(".")
    if not name or len(name) > 253 or "." not in name:
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    if name.replace(".", "").isdigit():
        return None  # an address with a typo, never a name
    return name


def domain_covers(domain: str, qname: str) -> bool:
    """Whether ``domain`` covers the query name ``qname`` (itself or a subdomain)."""
    qname = qname.lower().removesuffix(".")
    return qname == domain or qname.endswith("." + domain)


@dataclass(frozen=True)
class Targets:
    """One list of --allow-out or --deny-out, split into networks and domains (sorted, no duplicates)."""

    networks: tuple[IPv4Network, ...] = ()
    domains: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], flag: str) -> Targets:
        networks: set[IPv4Network] = set()
        domains: set[str] = set()
        items = list(entries)
        if len(items) > limits.MAX_EGRESS_ENTRIES:
            raise PolicyError(f"{flag}: at most {limits.MAX_EGRESS_ENTRIES} entries, got {len(items)}")
        for entry in items:
            text = entry.strip()
            try:
                networks.add(IPv4Network(text, strict=False))
                continue
            except ValueError:
                pass
            domain = normalize_domain(text)
            if domain is None:
                raise PolicyError(f"{flag} {quote(entry)}: not an IPv4 address, CIDR or domain name")
            domains.add(domain)
        return cls(tuple(sorted(networks)), tuple(sorted(domains)))

    @property
    def empty(self) -> bool:
        return not (self.networks or self.domains)

    def entries(self) -> list[str]:
        return [str(n) for n in self.networks] + list(self.domains)

    def covers(self, qname: str) -> bool:
        return any(domain_covers(d, qname) for d in self.domains)


@dataclass(frozen=True)
class EgressPolicy:
    allow: Targets = field(default_factory=Targets)
    deny: Targets = field(default_factory=Targets)
    no_internet: bool = False

    @classmethod
    def parse(
        cls, allow_out: Iterable[str] = (), deny_out: Iterable[str] = (), no_internet: bool = False
    ) -> EgressPolicy:
        return cls(
            Targets.parse(allow_out, "--allow-out"), Targets.parse(deny_out, "--deny-out"), no_internet
        )

    @property
    def default_deny(self) -> bool:
        """Whether what no entry allows is dropped (an allow list, or no internet at all)."""
        return self.no_internet or not self.allow.empty

    def resolves(self, qname: str) -> bool:
        """Whether the gateway's DNS forwarder answers this VM for ``qname``."""
        if self.no_internet or self.deny.covers(qname):
            return False
        return self.allow.empty or self.allow.covers(qname)

    def pins(self, qname: str) -> bool:
        """Whether the addresses answered for ``qname`` must be added to the VM's allowed set."""
        return not self.no_internet and self.allow.covers(qname)

    def to_json(self) -> str:
        return json.dumps(
            {
                "allow_out": self.allow.entries(),
                "deny_out": self.deny.entries(),
                "no_internet": self.no_internet,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> EgressPolicy:
        data: dict[str, Any] = json.loads(text)
        return cls.parse(data.get("allow_out", ()), data.get("deny_out", ()), bool(data.get("no_internet")))


@dataclass(frozen=True, order=True)
class PortForward:
    host_address: IPv4Address
    protocol: str
    host_port: int
    guest_port: int

    @classmethod
    def parse(cls, spec: str) -> PortForward:
        """``[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]``, e.g. ``8080:80``, ``0.0.0.0`` is refused."""
        text, _, protocol = spec.strip().partition("/")
        protocol = (protocol or "tcp").lower()
        if protocol not in PROTOCOLS:
            raise PolicyError(f"--publish {quote(spec)}: protocol must be tcp or udp, not {quote(protocol)}")
        parts = text.split(":")
        if len(parts) == 2:
            parts.insert(0, limits.DEFAULT_PUBLISH_ADDRESS)
        if len(parts) != 3:
            raise PolicyError(f"--publish {quote(spec)}: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]")
        try:
            address = IPv4Address(parts[0])
        except ValueError:
            raise PolicyError(f"--publish {quote(spec)}: {quote(parts[0])} is not an IPv4 address") from None
        if address.is_unspecified or address.is_multicast:
            raise PolicyError(f"--publish {quote(spec)}: publish on one host address, not {address}")
        return cls(address, protocol, _port(parts[1], spec), _port(parts[2], spec))

    def __str__(self) -> str:
        return f"{self.host_address}:{self.host_port}:{self.guest_port}/{self.protocol}"


def check_host_side(port: PortForward) -> None:
    """The host address is one of this host's (namespace's) and no host process holds the port: a
    trial bind, released at once. A DNAT would silently shadow such a listener's new connections."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((str(port.host_address), port.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PolicyError(
                    f"--publish {port}: {port.host_address} is not an address of this host"
                ) from None
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"--publish {port}: a host process already listens there") from None
            raise PolicyError(f"--publish {port}: cannot use the host port: {exc.strerror}") from None


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PolicyError(f"--publish {quote(spec)}: {quote(text)} is not a port (1-65535)")
    return int(text)


def parse_ports(specs: Iterable[str]) -> tuple[PortForward, ...]:
    """Several ``--publish`` values; the same host address, protocol and port twice is an error."""
    ports = [PortForward.parse(s) for s in specs]
    if len(ports) > limits.MAX_PUBLISHED_PORTS:
        raise PolicyError(f"--publish: at most {limits.MAX_PUBLISHED_PORTS} ports per VM, got {len(ports)}")
    keys = [(p.host_address, p.protocol, p.host_port) for p in ports]
    if len(set(keys)) != len(keys):
        raise PolicyError("--publish: the same host address, port and protocol is given twice")
    return tuple(sorted(ports))
