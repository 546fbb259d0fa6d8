"""A guest's identity, set through the agent's ``configure`` operation (docs/agent-protocol.md).

``GuestIdentity`` is what the host asks for; it is validated on construction by the same code the agent
uses (``clawpot.agent.identity``), so a bad value fails here, before any VM is touched.
``ConfiguredIdentity`` is the agent's answer: the identity now in effect, read back from the guest.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clawpot import limits
from clawpot.agent.identity import DEFAULT_INTERFACE, FIELDS, REFRESH_FIELDS, parse_request
from clawpot.agent.protocol import FrameType, decode_json
from clawpot.agent_client.connection import AgentConnection
from clawpot.agent_client.errors import ProtocolError, RemoteError


@dataclass(frozen=True)
class GuestIdentity:
    """Who a guest is on the network. A field left None keeps the guest's current value.

    ``entropy`` (16-512 bytes, e.g. ``os.urandom(64)``) is added to the guest kernel's RNG, which is
    reseeded; ``clock``: the guest's wall clock is stepped to the host's time, read when the request is
    built. A copy of a VM (restore, fork, pool) asks for both (``refreshed``).

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
    entropy: bytes | None = None
    clock: bool = False

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
            "entropy": None if self.entropy is None else base64.b64encode(self.entropy).decode(),
            "clock_ns": time.time_ns() if self.clock else None,
        }

    @property
    def touches_network(self) -> bool:
        return self.address is not None or self.mac is not None

    def refreshed(self) -> GuestIdentity:
        """This identity plus what a copy of a VM needs: fresh host entropy and the host's clock."""
        return dataclasses.replace(self, entropy=os.urandom(limits.REFRESH_ENTROPY_BYTES), clock=True)

    def request(self, *, announce: bool = True) -> dict[str, Any]:
        """The OPEN request of ``configure`` (the clock, when asked, is read now)."""
        fields = {key: value for key, value in self._fields().items() if value is not None}
        return {"op": "configure", **fields, "announce": announce}


@dataclass(frozen=True)
class ConfiguredIdentity:
    """The agent's answer: what is in effect in the guest after ``configure``, read back from its kernel
    and /etc (a report, so it is not held to GuestIdentity's rules: a guest may carry odd state)."""

    interface: str
    hostname: str
    mac: str
    address: str | None  # the interface's first IPv4 address, "a.b.c.d/prefix"
    addresses: tuple[str, ...]  # all of them: exactly one after configure set an address
    gateway: str | None  # the default route via the interface, if any
    dns: tuple[str, ...]  # the nameservers of /etc/resolv.conf
    link_up: bool
    changed: frozenset[str]  # which of mac, address, gateway, hostname, dns differed and were set
    announced: bool  # a gratuitous ARP went out for the address and MAC
    duration: float  # seconds the agent spent
    # The guest's wall clock right after it was stepped (None: not asked, or an agent without it).
    clock_ns: int | None = None
    # True: the entropy was credited and the RNG reseeded; False: only mixed in; None: not asked.
    entropy_credited: bool | None = None
    # Seconds the agent spent in each step, in order (empty from an agent that does not say).
    steps: tuple[tuple[str, float], ...] = ()

    def satisfies(self, wanted: GuestIdentity) -> bool:
        """True when every field ``wanted`` sets is in effect (its address being the only one)."""
        checks = [
            wanted.interface == self.interface,
            wanted.hostname in (None, self.hostname),
            wanted.mac in (None, self.mac),
            wanted.dns is None or tuple(wanted.dns) == self.dns,
            wanted.address is None
            or (self.addresses == (wanted.address,) and wanted.gateway == self.gateway),
            # An agent that predates the refresh ignores its fields: that is not a refreshed copy.
            wanted.entropy is None or ("entropy" in self.changed and self.entropy_credited is not None),
            not wanted.clock or ("clock" in self.changed and self.clock_ns is not None),
        ]
        if wanted.touches_network:
            checks.append(self.link_up)
        return all(checks)


def parse_result(body: dict[str, Any]) -> ConfiguredIdentity:
    try:
        fields = {
            "interface": body["interface"],
            "hostname": body["hostname"],
            "mac": body["mac"],
            "address": body["address"],
            "addresses": tuple(body["addresses"]),
            "gateway": body["gateway"],
            "dns": tuple(body["dns"]),
            "link_up": body["link_up"],
            "changed": frozenset(body["changed"]),
            "announced": body["announced"],
            "duration": body["duration"],
            "clock_ns": body.get("clock_ns"),
            "entropy_credited": body.get("entropy_credited"),
            "steps": tuple(dict(body.get("steps") or {}).items()),
        }
        strings = ("interface", "hostname", "mac")
        if not (
            all(isinstance(fields[k], str) for k in strings)
            and all(isinstance(fields[k], str | None) for k in ("address", "gateway"))
            and all(isinstance(v, str) for v in (*fields["addresses"], *fields["dns"]))
            and fields["changed"] <= set(FIELDS) | set(REFRESH_FIELDS)
            and (fields["clock_ns"] is None or type(fields["clock_ns"]) is int)
            and isinstance(fields["entropy_credited"], bool | None)
            and all(isinstance(k, str) and isinstance(v, int | float) for k, v in fields["steps"])
            and all(isinstance(fields[k], bool) for k in ("link_up", "announced"))
            and isinstance(fields["duration"], int | float)
        ):
            raise ValueError("a field has the wrong type")
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed configure result from the agent: {exc}") from None
    return ConfiguredIdentity(**fields)


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
    result = parse_result(body)
    if not result.satisfies(identity):
        # The agent said it succeeded, yet the guest is not as asked (a bug, or something in the guest
        # changed it at the same moment): never hand out a VM on the strength of that answer.
        raise RemoteError(
            "not_in_effect", f"configure ended but the guest's identity is not as asked: {result}"
        )
    return result


@dataclass(frozen=True)
class Refreshed:
    """The agent's answer to ``refresh``."""

    clock_ns: int | None  # the guest's wall clock right after the step
    entropy_credited: bool | None  # True: credited and reseeded; False: only mixed in
    duration: float


async def refresh(
    conn: AgentConnection,
    *,
    timeout: float,  # noqa: ASYNC109 - the bound of the whole call, documented on AgentClient.refresh
) -> Refreshed:
    """Fresh host entropy into the guest's RNG (reseeded) and its clock stepped to the host's."""
    entropy = base64.b64encode(os.urandom(limits.REFRESH_ENTROPY_BYTES)).decode()
    stream = conn.open_stream({"op": "refresh", "entropy": entropy, "clock_ns": time.time_ns()})
    try:
        async with asyncio.timeout(timeout):
            end = await stream.recv_until(FrameType.END)
    except TimeoutError:
        raise TimeoutError(f"refresh: no answer from the agent within {timeout:g} s") from None
    finally:
        stream.close()
    try:
        body = decode_json(end.payload)
        result = Refreshed(body["clock_ns"], body["entropy_credited"], body["duration"])
        if not (
            type(result.clock_ns) is int
            and isinstance(result.entropy_credited, bool)
            and isinstance(result.duration, int | float)
        ):
            raise ValueError("a field has the wrong type")
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed refresh result from the agent: {exc}") from None
    return result
