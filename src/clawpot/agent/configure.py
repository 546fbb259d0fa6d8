"""The ``configure`` operation: give the guest a new identity, on a VM that may already have one.

Request (validated by ``identity``): ``hostname``, ``address`` + ``gateway``, ``dns``, ``mac``,
``interface`` (eth0), ``announce``. END: the identity now in effect, read back from the kernel and
/etc, with ``changed`` (what differed and was set), ``announced`` and ``duration``.

First, on a copy of a VM (``refresh``): ``clock_ns`` steps the wall clock to the host's time and
``entropy`` is added to the kernel's RNG, which is reseeded (END: ``clock_ns`` read back right after the
step, ``entropy_credited``). Both always run when asked and are named in ``changed``.

Then the identity steps, in this order, each skipped when the kernel already has what was asked (so a
repeat changes nothing):

1. MAC: changed on the running link (virtio-net allows it); a driver that refuses (EBUSY) gets it with
   the link down, then up again. Any network field brings the link up (a VM booted without ``ip=`` has
   eth0 down).
2. address: every other IPv4 address of the interface is deleted first, then the new one added. Deleting
   first matters: with the kernel's defaults, deleting a primary address also deletes the secondaries,
   and a new address in the same subnet would be one.
3. default route: every default route of the main table replaced by one via ``gateway`` on the
   interface (with ``address`` but no ``gateway``: the interface's default routes are removed).
4. hostname: sethostname(2), then /etc/hostname and the 127.0.1.1 line of /etc/hosts.
5. dns: /etc/resolv.conf.
6. a gratuitous ARP for the interface's address, whenever ``mac`` or ``address`` was given.

Not transactional: a step that fails ends the stream with ``io_error`` naming the step and what was
already applied; the host then discards the VM rather than use a half-configured one. Everything is
checked (interface exists, /etc writable) before the first change.

Only the guest's agent may do this (``--guest`` under the guest's init), or a host agent given
``--configure-sandbox`` inside its own user namespace (tests): anywhere else it would rename the host.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import arp, etcfiles, refresh
from .identity import ConfigureRequest, parse_refresh, parse_request
from .netlink import Link, RtNetlink
from .protocol import ErrorCode
from .session import Session, SessionError

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class Machine:
    """What ``configure`` changes: the network and UTS namespaces the agent runs in, and the identity
    files in ``etc``. Its netlink and packet sockets stay open between calls, because closing them costs
    milliseconds (an RCU grace period for the packet socket), far more than the calls themselves."""

    def __init__(self, etc: Path) -> None:
        self.etc = etc
        self._netlink: RtNetlink | None = None
        self._packet: socket.socket | None = None

    def netlink(self) -> RtNetlink:
        if self._netlink is None:
            self._netlink = RtNetlink()
        return self._netlink

    def packet_socket(self) -> socket.socket:
        if self._packet is None:
            self._packet = arp.packet_socket()
        return self._packet

    def reset(self) -> None:
        """After an error: the next call starts with fresh sockets (none holds a stale answer)."""
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None
        if self._packet is not None:
            self._packet.close()
            self._packet = None


class ConfigureSession(Session):
    op = "configure"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        try:
            self.request = parse_request(req)
        except ValueError as exc:
            raise SessionError(ErrorCode.BAD_REQUEST, str(exc)) from None

    def start(self) -> None:
        machine = self.conn.ctx.configure_target
        if machine is None:
            raise SessionError(
                ErrorCode.NOT_SUPPORTED,
                "configure changes the identity of the machine the agent runs on: only the guest's agent "
                "does that (--guest under the guest's init)",
            )
        self.finish(apply(self.request, machine))


class RefreshSession(Session):
    """``refresh``: only the clock step and the entropy of ``configure`` (no identity, no netlink, no
    /etc): what a warm pool VM needs at hand-out, its identity being its own already. END:
    ``clock_ns``, ``entropy_credited``, ``changed``, ``duration``."""

    op = "refresh"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        try:
            self.request = parse_refresh(req)
        except ValueError as exc:
            raise SessionError(ErrorCode.BAD_REQUEST, str(exc)) from None

    def start(self) -> None:
        if self.conn.ctx.configure_target is None:
            raise SessionError(
                ErrorCode.NOT_SUPPORTED, "refresh sets the clock and RNG of the guest: only its agent does"
            )
        started = time.monotonic()
        result: dict[str, Any] = {}
        changed = []
        step = "clock"
        try:
            if self.request.clock_ns is not None:
                result["clock_ns"] = refresh.step_clock(self.request.clock_ns)
                changed.append("clock")
            if self.request.entropy is not None:
                step = "entropy"
                result["entropy_credited"] = refresh.add_entropy(self.request.entropy)
                changed.append("entropy")
        except OSError as exc:
            done = ", ".join(changed) or "nothing"
            raise SessionError(
                ErrorCode.IO_ERROR,
                f"refresh failed at {step}: {exc.strerror or exc} (already changed: {done})",
            ) from None
        self.finish({**result, "changed": changed, "duration": round(time.monotonic() - started, 6)})


def apply(req: ConfigureRequest, machine: Machine) -> dict[str, Any]:
    """Make the machine's identity what ``req`` asks; returns the identity in effect (the END payload)."""
    started = time.monotonic()
    etc = machine.etc
    try:
        index: int | None = socket.if_nametoindex(req.interface)
    except OSError:
        # A VM without a network (a server run with --no-network) has no interface: a configure that
        # asks nothing of it (hostname, dns, clock, entropy) still applies.
        if req.touches_network or req.gateway is not None:
            raise SessionError(ErrorCode.BAD_REQUEST, f"no network interface {req.interface!r}") from None
        index = None
    if (req.hostname is not None or req.dns is not None) and not os.access(etc, os.W_OK):
        raise SessionError(
            ErrorCode.NOT_SUPPORTED, f"{etc} is not writable (a VM booted without a writable layer?)"
        )
    changed: list[str] = []
    refreshed: dict[str, Any] = {}
    steps = _Steps()  # END's "steps": how long each took (where a slow configure spends its time)
    steps.begin("clock")
    try:
        if req.clock_ns is not None:
            refreshed["clock_ns"] = refresh.step_clock(req.clock_ns)
            changed.append("clock")
        if req.entropy is not None:
            steps.begin("entropy")
            refreshed["entropy_credited"] = refresh.add_entropy(req.entropy)
            changed.append("entropy")
        nl = _link_steps(req, machine, index, steps, changed) if index is not None else None
        _etc_steps(req, etc, steps, changed)
        steps.begin("reading back")
        if nl is None or index is None:
            result, announced = _without_network(req.interface, etc), False
        else:
            result = _in_effect(nl, index, etc)
            announced = req.announce and req.touches_network and _announce(machine, req.interface, result)
    except OSError as exc:
        machine.reset()
        done = ", ".join(changed) or "nothing"
        raise SessionError(
            ErrorCode.IO_ERROR,
            f"configure failed at {steps.current}: {exc.strerror or exc} (already changed: {done})",
        ) from None
    result.update(refreshed)
    result.update(
        changed=changed,
        announced=announced,
        duration=round(time.monotonic() - started, 6),
        steps=steps.durations(),
    )
    log.info("configured %s: changed %s", req.interface, ", ".join(changed) or "nothing")
    return result


def _link_steps(
    req: ConfigureRequest, machine: Machine, index: int, steps: _Steps, changed: list[str]
) -> RtNetlink:
    """Steps 1-3 (MAC, link up, address, default route) on the interface ``index``."""
    steps.begin("netlink")
    nl = machine.netlink()
    link = nl.link(index)
    if req.mac is not None:
        steps.begin("mac")
        if link.mac != req.mac:
            _set_mac(nl, link, req.mac)
            changed.append("mac")
    if req.touches_network:
        steps.begin("link up")
        if not link.up:  # (a MAC set the slow way left it up already: setting up again is harmless)
            nl.set_up(index, True)
    if req.address is not None:
        steps.begin("address")
        want = (req.address.ip, req.address.prefix)
        have = nl.addresses(index)
        if have != [want]:
            for ip, prefix in have:
                nl.delete_address(index, ip, prefix)
            nl.add_address(index, req.address.ip, req.address.prefix, req.address.broadcast)
            changed.append("address")
        steps.begin("gateway")
        if _set_default_route(nl, index, req.gateway):
            changed.append("gateway")
    return nl


def _etc_steps(req: ConfigureRequest, etc: Path, steps: _Steps, changed: list[str]) -> None:
    """Steps 4-5: the hostname and /etc/resolv.conf."""
    if req.hostname is not None:
        steps.begin("hostname")
        if _set_hostname(req.hostname, etc):
            changed.append("hostname")
    if req.dns is not None:
        steps.begin("dns")
        if etcfiles.replace_file(etc / "resolv.conf", etcfiles.resolv_text(req.dns)):
            changed.append("dns")


class _Steps:
    """The step in progress (named in an error) and when each began."""

    def __init__(self) -> None:
        self.current = ""
        self._began: list[tuple[str, float]] = []

    def begin(self, name: str) -> None:
        self.current = name
        self._began.append((name, time.monotonic()))

    def durations(self) -> dict[str, float]:
        ends = [at for _, at in self._began[1:]] + [time.monotonic()]
        return {name: round(end - at, 6) for (name, at), end in zip(self._began, ends, strict=True)}


def _set_mac(nl: RtNetlink, link: Link, mac: str) -> None:
    try:
        nl.set_mac(link.index, mac)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # The driver cannot change a running link's address: down, change, up. Going down flushes the
        # routes through the link; the address step and the route step after this restore them.
        nl.set_up(link.index, False)
        try:
            nl.set_mac(link.index, mac)
        finally:
            nl.set_up(link.index, True)


def _set_default_route(nl: RtNetlink, index: int, gateway: str | None) -> bool:
    """Leave exactly the wanted default route (or none via the interface); True when anything changed."""
    routes = nl.default_routes()
    if gateway is None:
        stale = [r for r in routes if r.oif == index]
    else:
        if [(r.gateway, r.oif) for r in routes] == [(gateway, index)]:
            return False
        stale = routes
    for route in stale:
        nl.delete_default_route(route)
    if gateway is not None:
        nl.add_default_route(gateway, index)
    return bool(stale) or gateway is not None


def _set_hostname(hostname: str, etc: Path) -> bool:
    changed = False
    if socket.gethostname() != hostname:
        socket.sethostname(hostname)
        changed = True
    changed |= etcfiles.replace_file(etc / "hostname", hostname + "\n")
    hosts = etcfiles.hosts_text(etcfiles.read_text(etc / "hosts"), hostname)
    changed |= etcfiles.replace_file(etc / "hosts", hosts)
    return changed


def _announce(machine: Machine, interface: str, in_effect: dict[str, Any]) -> bool:
    """A gratuitous ARP for the interface's first address; False when there is none or sending failed."""
    address = in_effect["address"]
    if address is None:
        return False
    try:
        arp.announce(machine.packet_socket(), interface, in_effect["mac"], address.split("/")[0])
    except OSError as exc:
        log.warning("gratuitous ARP on %s not sent: %s", interface, exc.strerror or exc)
        return False
    return True


def _without_network(interface: str, etc: Path) -> dict[str, Any]:
    """What is in effect on a VM that has no network interface."""
    return {
        "interface": interface,
        "hostname": socket.gethostname(),
        "mac": "",
        "link_up": False,
        "address": None,
        "addresses": [],
        "gateway": None,
        "dns": etcfiles.nameservers(etcfiles.read_text(etc / "resolv.conf")),
    }


def _in_effect(nl: RtNetlink, index: int, etc: Path) -> dict[str, Any]:
    link = nl.link(index)
    addresses = [f"{ip}/{prefix}" for ip, prefix in nl.addresses(index)]
    gateways = [r.gateway for r in nl.default_routes() if r.oif == index and r.gateway]
    return {
        "interface": link.name,
        "hostname": socket.gethostname(),
        "mac": link.mac,
        "link_up": link.up,
        "address": addresses[0] if addresses else None,
        "addresses": addresses,
        "gateway": gateways[0] if gateways else None,
        "dns": etcfiles.nameservers(etcfiles.read_text(etc / "resolv.conf")),
    }
