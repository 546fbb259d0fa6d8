"""A minimal rtnetlink client (standard library only): read and change one link, its IPv4 addresses and
the default route.

The guest image has iproute2, but each ``ip`` process costs tens of milliseconds under TCG, and
``configure`` runs on the path that hands out a VM: one netlink socket does every step in microseconds.
Only what ``configure`` needs is here; the messages are those of rtnetlink(7). Errors are OSError with the
kernel's errno. The socket has a timeout, so a call never blocks the agent for long.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME = 1, 3
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` and the kernel's ip= use
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNICAST = 1
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLMSGERR = struct.Struct("=i")  # negative errno (0: ack), followed by the request's header
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")
_RECV_BUFFER = 65536


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    up: bool


@dataclass(frozen=True)
class Route:
    """A default route of the main table."""

    gateway: str | None
    oif: int | None


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    length = _RTATTR.size + len(value)
    return (_RTATTR.pack(length, kind) + value).ljust(_align(length), b"\0")


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    pos = 0
    while pos + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, pos)
        if length < _RTATTR.size or pos + length > len(data):
            break
        found.setdefault(kind & 0x3FFF, data[pos + _RTATTR.size : pos + length])  # strip NLA_F_* bits
        pos += _align(length)
    return found


def _ip(text: str) -> bytes:
    return socket.inet_aton(text)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class RtNetlink:
    def __init__(self, timeout: float = 2.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------------------

    def _call(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; returns the (type, body) of every answer before the ack or the dump's end."""
        self._seq += 1
        seq = self._seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body)
        answers: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(_RECV_BUFFER)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                length, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(data, pos)
                if length < _NLMSGHDR.size or pos + length > len(data):
                    raise OSError(errno.EPROTO, "truncated netlink message")
                payload = data[pos + _NLMSGHDR.size : pos + length]
                pos += _align(length)
                if mseq != seq:
                    continue  # a late answer to an earlier request
                if mtype == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return answers
                if mtype == NLMSG_DONE:
                    return answers
                answers.append((mtype, payload))  # a dump's part, or a GET's answer before its ack

    # --- links -------------------------------------------------------------------------------------------

    def link(self, index: int) -> Link:
        for mtype, body in self._call(RTM_GETLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)):
            if mtype != RTM_NEWLINK:
                continue
            _, _, got, flags, _ = _IFINFOMSG.unpack_from(body)
            attrs = _attrs(body[_IFINFOMSG.size :])
            if got == index:
                name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                return Link(index, name, mac_text(attrs.get(IFLA_ADDRESS, b"")), bool(flags & IFF_UP))
        raise OSError(errno.ENODEV, f"no link with index {index}")

    def set_up(self, index: int, up: bool) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
        self._call(RTM_NEWLINK, 0, body)

    def set_mac(self, index: int, mac: str) -> None:
        """Raises EBUSY when the driver cannot change the address of a running link."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + _attr(IFLA_ADDRESS, mac_bytes(mac))
        self._call(RTM_NEWLINK, 0, body)

    # --- IPv4 addresses ------------------------------------------------------------------------------------

    def addresses(self, index: int) -> list[tuple[str, int]]:
        """(address, prefix length) of every IPv4 address of the link, primary first."""
        found = []
        for mtype, body in self._call(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
            if mtype != RTM_NEWADDR:
                continue
            family, prefix, _, _, got = _IFADDRMSG.unpack_from(body)
            attrs = _attrs(body[_IFADDRMSG.size :])
            local = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if family == socket.AF_INET and got == index and local is not None and len(local) == 4:
                found.append((socket.inet_ntoa(local), prefix))
        return found

    def add_address(self, index: int, ip: str, prefix: int, broadcast: str | None) -> None:
        body = _IFADDRMSG.pack(socket.AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, _ip(ip)) + _attr(IFA_ADDRESS, _ip(ip))
        if broadcast is not None:
            body += _attr(IFA_BROADCAST, _ip(broadcast))
        self._call(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def delete_address(self, index: int, ip: str, prefix: int) -> None:
        body = _IFADDRMSG.pack(socket.AF_INET, prefix, 0, 0, index)
        self._call(RTM_DELADDR, 0, body + _attr(IFA_LOCAL, _ip(ip)) + _attr(IFA_ADDRESS, _ip(ip)))

    # --- default routes ----------------------------------------------------------------------------------

    def default_routes(self) -> list[Route]:
        routes = []
        for mtype, body in self._call(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(socket.AF_INET, *[0] * 8)):
            if mtype != RTM_NEWROUTE:
                continue
            family, dst_len, _, _, table, _, _, rtype, _ = _RTMSG.unpack_from(body)
            attrs = _attrs(body[_RTMSG.size :])
            if RTA_TABLE in attrs:
                table = _U32.unpack(attrs[RTA_TABLE][:4])[0]
            if family != socket.AF_INET or dst_len != 0 or table != RT_TABLE_MAIN or rtype != RTN_UNICAST:
                continue
            gateway = attrs.get(RTA_GATEWAY)
            oif = attrs.get(RTA_OIF)
            routes.append(
                Route(
                    socket.inet_ntoa(gateway) if gateway and len(gateway) == 4 else None,
                    _U32.unpack(oif[:4])[0] if oif and len(oif) >= 4 else None,
                )
            )
        return routes

    def _route_body(self, route: Route, *, protocol: int, scope: int, rtype: int) -> bytes:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, protocol, scope, rtype, 0)
        if route.gateway is not None:
            body += _attr(RTA_GATEWAY, _ip(route.gateway))
        if route.oif is not None:
            body += _attr(RTA_OIF, _U32.pack(route.oif))
        return body

    def add_default_route(self, gateway: str, oif: int) -> None:
        route = Route(gateway, oif)
        body = self._route_body(route, protocol=RTPROT_BOOT, scope=RT_SCOPE_UNIVERSE, rtype=RTN_UNICAST)
        self._call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def delete_default_route(self, route: Route) -> None:
        # Scope NOWHERE, protocol and type 0: match the route whatever they are (fib_table_delete).
        self._call(RTM_DELROUTE, 0, self._route_body(route, protocol=0, scope=RT_SCOPE_NOWHERE, rtype=0))
