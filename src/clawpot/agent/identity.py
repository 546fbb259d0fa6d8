"""The ``configure`` request: a guest's identity (hostname, IPv4 address and gateway, DNS, MAC), validated.

Standard library only and free of side effects. The agent parses OPEN requests with it, and the host
client checks a ``GuestIdentity`` with the same code before sending it, so both sides agree on what is
valid. What the operation changes, and in which order, is in ``configure``.

Besides the identity, ``configure`` refreshes what a copy of a VM shares with its original (restored
from a snapshot, forked, handed out from a pool): ``entropy`` (base64 bytes from the host, added to the
kernel's RNG and credited, then the RNG reseeded, so two copies never produce the same random bytes) and
``clock_ns`` (the host's CLOCK_REALTIME in ns: the guest's wall clock is stepped to it, since it stood
still while the snapshot waited).

Every field is optional: an omitted field keeps its current value. ``address`` and ``gateway`` go
together: giving ``address`` replaces every IPv4 address of the interface and its default route (none
without ``gateway``). IPv4 only: the guest kernel is built without IPv6 (assets/kernel.fragment).
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

OP = "configure"
DEFAULT_INTERFACE = "eth0"
# sethostname(2) refuses more than HOST_NAME_MAX (64) bytes.
HOSTNAME_MAX = 64
# glibc's resolver (MAXNS) ignores every nameserver line past the third: more would be a silent lie.
MAX_DNS_SERVERS = 3
# Identity fields, in the order ``configure`` applies them.
FIELDS = ("mac", "address", "gateway", "hostname", "dns")
# What a copy of a VM refreshes, applied before the identity (``changed`` names them too).
REFRESH_FIELDS = ("clock", "entropy")
# Fresh entropy per request: at least a full reseed's worth (32 bytes), at most a page-sized bound.
ENTROPY_MIN_BYTES = 16
ENTROPY_MAX_BYTES = 512
# A clock the guest may be stepped to: 2001-09-09 .. 2286-11-20 (ns since the epoch, 10**18 .. 10**19).
# Anything outside is a host bug, not a time.
CLOCK_MIN_NS = 10**18
CLOCK_MAX_NS = 10**19

# Labels of letters, digits, '-' and '_', separated by dots; a label never starts with '-' (it would
# read as an option to hostname(1)). VM ids are used as hostnames, so the rules admit every one of them
# (server/validate.py: up to 64 of [A-Za-z0-9_-], first a letter or digit), hence '_' and labels of up
# to 64 characters where DNS would stop at 63: the name is the guest's own, not published in DNS.
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1; no '/', ':' or whitespace
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_U32 = struct.Struct("!I")


@dataclass(frozen=True)
class Address:
    """An IPv4 address with its prefix length, as the interface carries it."""

    ip: str
    prefix: int

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefix}"

    @property
    def _mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF

    @property
    def network(self) -> int:
        return ipv4_int(self.ip) & self._mask

    @property
    def broadcast(self) -> str | None:
        """The subnet's broadcast address; None for /31 and /32, which have none."""
        if self.prefix > 30:
            return None
        return int_ipv4(self.network | (~self._mask & 0xFFFFFFFF))

    def contains(self, ip: str) -> bool:
        return ipv4_int(ip) & self._mask == self.network


@dataclass(frozen=True)
class ConfigureRequest:
    interface: str = DEFAULT_INTERFACE
    hostname: str | None = None
    address: Address | None = None
    gateway: str | None = None
    dns: tuple[str, ...] | None = None
    mac: str | None = None
    # Send a gratuitous ARP once the address or MAC is set, so the bridge and neighbours learn the pair.
    announce: bool = True
    entropy: bytes | None = None
    clock_ns: int | None = None

    @property
    def touches_network(self) -> bool:
        return self.address is not None or self.mac is not None

    def to_json(self) -> dict[str, Any]:
        """The OPEN request (without ``window``); omitted fields stay omitted."""
        req: dict[str, Any] = {"op": OP, "interface": self.interface, "announce": self.announce}
        if self.hostname is not None:
            req["hostname"] = self.hostname
        if self.address is not None:
            req["address"] = str(self.address)
            req["gateway"] = self.gateway
        if self.dns is not None:
            req["dns"] = list(self.dns)
        if self.mac is not None:
            req["mac"] = self.mac
        if self.entropy is not None:
            req["entropy"] = base64.b64encode(self.entropy).decode()
        if self.clock_ns is not None:
            req["clock_ns"] = self.clock_ns
        return req


# --- IPv4 without the ipaddress module (its import would cost the agent's start under TCG) ------------


def ipv4_int(text: str) -> int:
    return int(_U32.unpack(socket.inet_aton(text))[0])


def int_ipv4(value: int) -> str:
    return socket.inet_ntoa(_U32.pack(value))


def check_ipv4(value: object, what: str) -> str:
    """A unicast IPv4 address in dotted-quad form (the only form accepted: no '010.1', no '1.2.3')."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IPv4 address string")
    try:
        packed = socket.inet_pton(socket.AF_INET, value)
    except OSError:
        raise ValueError(f"{what} {value[:40]!r} is not an IPv4 address (a.b.c.d)") from None
    first = packed[0]
    if value == "0.0.0.0" or first == 127 or first >= 224:
        raise ValueError(f"{what} {value} is not a unicast address (0.0.0.0, loopback, multicast, reserved)")
    return socket.inet_ntop(socket.AF_INET, packed)


def check_address(value: object) -> Address:
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError("'address' must be 'a.b.c.d/prefix'")
    ip_text, prefix_text = value.split("/")
    ip = check_ipv4(ip_text, "'address'")
    if not prefix_text.isdigit() or not 1 <= int(prefix_text) <= 32 or len(prefix_text) > 2:
        raise ValueError(f"'address' prefix {prefix_text[:10]!r} must be an integer in [1, 32]")
    addr = Address(ip, int(prefix_text))
    if addr.prefix <= 30 and ip in (int_ipv4(addr.network), addr.broadcast):
        raise ValueError(f"'address' {addr} is the network or broadcast address of its subnet")
    return addr


def check_gateway(value: object, address: Address) -> str:
    gateway = check_ipv4(value, "'gateway'")
    if gateway == address.ip:
        raise ValueError(f"'gateway' {gateway} is the interface's own address")
    if not address.contains(gateway) or gateway == address.broadcast:
        raise ValueError(f"'gateway' {gateway} is not a host of the interface's subnet {address}")
    return gateway


def check_hostname(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("'hostname' must be a non-empty string")
    if len(value.encode()) > HOSTNAME_MAX:
        raise ValueError(f"'hostname' is longer than {HOSTNAME_MAX} bytes")
    if not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise ValueError(
            f"'hostname' {value[:40]!r} must be dot-separated labels of letters, digits, '-' and '_' "
            "(not starting with '-')"
        )
    return value


def check_dns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("'dns' must be a list of IPv4 addresses")
    if len(value) > MAX_DNS_SERVERS:
        raise ValueError(f"'dns' lists {len(value)} servers; the resolver uses at most {MAX_DNS_SERVERS}")
    servers = tuple(check_ipv4(item, "'dns' entry") for item in value)
    if len(set(servers)) != len(servers):
        raise ValueError("'dns' lists a server twice")
    return servers


def check_mac(value: object) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise ValueError("'mac' must be six hex bytes separated by ':' (06:00:c0:a8:64:07)")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"'mac' {mac} is a multicast address (lowest bit of the first byte set)")
    if mac == "00:00:00:00:00:00":
        raise ValueError("'mac' must not be all zeros")
    return mac


def check_entropy(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * ENTROPY_MAX_BYTES:
        raise ValueError(f"'entropy' must be base64 of {ENTROPY_MIN_BYTES}-{ENTROPY_MAX_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'entropy' is not valid base64") from None
    if not ENTROPY_MIN_BYTES <= len(data) <= ENTROPY_MAX_BYTES:
        raise ValueError(f"'entropy' must be {ENTROPY_MIN_BYTES}-{ENTROPY_MAX_BYTES} bytes, not {len(data)}")
    return data


def check_clock(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not CLOCK_MIN_NS <= value <= CLOCK_MAX_NS:
        raise ValueError("'clock_ns' must be the host's time in ns since the epoch (an integer)")
    return value


def check_interface(value: object) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise ValueError("'interface' must be an interface name (1-15 of letters, digits, '.', '-', '_')")
    return value


def parse_request(req: dict[str, Any]) -> ConfigureRequest:
    """Validate an OPEN request of ``configure``; ValueError with a one-line reason otherwise.

    Unknown keys are ignored (docs/agent-protocol.md, Versioning); a key given as null counts as omitted.
    """
    interface = req.get("interface")
    address = req.get("address")
    gateway = req.get("gateway")
    announce = req.get("announce", True)
    if not isinstance(announce, bool):
        raise ValueError("'announce' must be true or false")
    parsed_address = check_address(address) if address is not None else None
    if gateway is not None and parsed_address is None:
        raise ValueError("'gateway' needs 'address' (they are set together)")
    hostname, dns, mac = req.get("hostname"), req.get("dns"), req.get("mac")
    entropy, clock_ns = req.get("entropy"), req.get("clock_ns")
    result = ConfigureRequest(
        interface=DEFAULT_INTERFACE if interface is None else check_interface(interface),
        hostname=None if hostname is None else check_hostname(hostname),
        address=parsed_address,
        gateway=None if gateway is None or parsed_address is None else check_gateway(gateway, parsed_address),
        dns=None if dns is None else check_dns(dns),
        mac=None if mac is None else check_mac(mac),
        announce=announce,
        entropy=None if entropy is None else check_entropy(entropy),
        clock_ns=None if clock_ns is None else check_clock(clock_ns),
    )
    if (
        result.hostname is None
        and result.dns is None
        and not result.touches_network
        and result.entropy is None
        and result.clock_ns is None
    ):
        raise ValueError(
            "nothing to configure: give at least one of hostname, address, dns, mac, entropy, clock_ns"
        )
    return result


def parse_refresh(req: dict[str, Any]) -> ConfigureRequest:
    """Validate an OPEN request of ``refresh``: ``entropy`` and/or ``clock_ns`` only (ValueError)."""
    entropy, clock_ns = req.get("entropy"), req.get("clock_ns")
    if entropy is None and clock_ns is None:
        raise ValueError("nothing to refresh: give entropy, clock_ns or both")
    return ConfigureRequest(
        entropy=None if entropy is None else check_entropy(entropy),
        clock_ns=None if clock_ns is None else check_clock(clock_ns),
    )
