"""A guest's identity, set through the agent's ``configure`` operation (docs/agent-protocol.md).

``GuestIdentity`` is what the host asks for; it is validated on construction by the same code the agent
uses (``clawpot.agent.identity``), so a bad value fails here, before any VM is touched.
``ConfiguredIdentity`` is the agent's answer: the identity now in effect, read back from the guest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clawpot.agent.identity import DEFAULT_INTERFACE, FIELDS, check_mac, parse_request
from clawpot.agent.protocol import FrameType, decode_json
from clawpot.guest.connection import AgentConnection
from clawpot.guest.errors import ProtocolError


@dataclass(frozen=True)
class GuestIdentity:
    """Who a guest is on the network. A field left None keeps the guest's current value.

    ``address`` is ``"a.b.c.d/prefix"`` and replaces every IPv4 address of the interface; ``gateway``
    (only with ``address``) becomes the one default route, none when None. ``dns`` replaces
    /etc/resolv.conf (an empty sequence: no nameserver).
    """

    hostname: str | None = None
    address: str | None = None
    gateway: str | None = None
    dns: Sequence[str] | None = None
    mac: str | None = None
    interface: str = DEFAULT_INTERFACE

    def __post_init__(self) -> None:
        if isinstance(self.dns, str):  # a str is a Sequence[str] too: a classic slip
            raise ValueError("'dns' must be a list of IPv4 addresses")
        if self.dns is not None:
            object.__setattr__(self, "dns", tuple(self.dns))  # hashable, and not shared with the caller
        if self.mac is not None and isinstance(self.mac, str):
            object.__setattr__(self, "mac", self.mac.lower())
        parse_request(self._fields())  # ValueError with the agent's own message

    def _fields(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "hostname": self.hostname,
            "address": self.address,
            "gateway": self.gateway,
            "dns": None if self.dns is None else list(self.dns),
            "mac": self.mac,
        }

    def request(self, *, announce: bool = True) -> dict[str, Any]:
        """The OPEN request of ``configure``."""
        fields = {key: value for key, value in self._fields().items() if value is not None}
        return {"op": "configure", **fields, "announce": announce}


@dataclass(frozen=True)
class ConfiguredIdentity:
    """The agent's answer: what is in effect in the guest after ``configure``."""

    identity: GuestIdentity  # every field filled from the guest (gateway None: no default route)
    addresses: tuple[str, ...]  # every IPv4 address of the interface: exactly one after an address change
    link_up: bool
    changed: frozenset[str]  # which of mac, address, gateway, hostname, dns were different and were set
    announced: bool  # a gratuitous ARP went out for the address and MAC
    duration: float  # seconds the agent spent


def _parse_result(body: dict[str, Any]) -> ConfiguredIdentity:
    try:
        addresses = body["addresses"]
        dns = body["dns"]
        changed = body["changed"]
        if not (
            isinstance(addresses, list)
            and all(isinstance(a, str) for a in addresses)
            and isinstance(dns, list)
            and isinstance(changed, list)
            and set(changed) <= set(FIELDS)
            and isinstance(body["link_up"], bool)
            and isinstance(body["announced"], bool)
            and isinstance(body["duration"], int | float)
        ):
            raise ValueError("field of the wrong type")
        address = body["address"]
        identity = GuestIdentity(
            hostname=body["hostname"],
            address=address,
            gateway=body["gateway"] if address is not None else None,
            dns=dns,
            mac=check_mac(body["mac"]),
            interface=body["interface"],
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed configure result from the agent: {exc}") from None
    return ConfiguredIdentity(
        identity=identity,
        addresses=tuple(addresses),
        link_up=body["link_up"],
        changed=frozenset(changed),
        announced=body["announced"],
        duration=float(body["duration"]),
    )


async def configure(
    conn: AgentConnection,
    identity: GuestIdentity,
    *,
    timeout: float,  # noqa: ASYNC109 - the bound of the whole call, documented on AgentClient.configure
    announce: bool = True,
) -> ConfiguredIdentity:
    stream = conn.open_stream(identity.request(announce=announce))
    try:
        async with asyncio.timeout(timeout):
            end = await stream.recv_until(FrameType.END)
    except TimeoutError:
        raise TimeoutError(f"configure: no answer from the agent within {timeout:g} s") from None
    finally:
        stream.close()
    try:
        body = decode_json(end.payload)
    except ValueError as exc:
        raise ProtocolError(f"malformed configure result from the agent: {exc}") from None
    return _parse_result(body)
