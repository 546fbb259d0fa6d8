"""A namespace that plays "the internet" for a server's namespace, with a DNS server the test runs.

``Internet.build(server_ns)`` makes a namespace joined to the server's by a veth pair (10.77.0.0/24):
the server's side is 10.77.0.1, the internet's has two addresses (ALLOWED, DENIED: the targets of
egress tests) and 169.254.169.254 (a "metadata service"), which the server's namespace routes to it,
so a test of the link-local rule fails if the rule is missing. Nothing leaves the two namespaces.

``serve_dns`` answers A queries for the names it is given (and NXDOMAIN otherwise), with dnspython:
guests resolve only names the test serves.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from support.netns import NetNamespace

SERVER_SIDE = "10.77.0.1"
ALLOWED = "10.77.0.2"
DENIED = "10.77.0.3"
METADATA = "169.254.169.254"
PREFIX = 24


@dataclass
class Internet:
    ns: NetNamespace
    server_ns: NetNamespace

    @classmethod
    def build(cls, server_ns: NetNamespace) -> Internet:
        ns = NetNamespace.create("clawpot-inet")
        try:
            outside, inside = "cpx" + secrets.token_hex(3), "cpi" + secrets.token_hex(3)
            server_ns.run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
            server_ns.run(["ip", "link", "set", inside, "netns", ns.name])
            server_ns.run(["ip", "addr", "add", f"{SERVER_SIDE}/{PREFIX}", "dev", outside])
            server_ns.run(["ip", "link", "set", outside, "up"])
            # The server's namespace routes the metadata range to "the internet", like a cloud host.
            server_ns.run(["ip", "route", "add", "169.254.0.0/16", "via", ALLOWED])
            for address in (ALLOWED, DENIED):
                ns.run(["ip", "addr", "add", f"{address}/{PREFIX}", "dev", inside])
            ns.run(["ip", "addr", "add", f"{METADATA}/32", "dev", "lo"])
            ns.run(["ip", "link", "set", inside, "up"])
            ns.run(["ip", "route", "add", "default", "via", SERVER_SIDE])
        except BaseException:
            ns.delete()
            raise
        return cls(ns, server_ns)

    def delete(self) -> None:
        self.ns.delete()


def serve_dns(ready: Callable[[], None], address: str, names: Mapping[str, str], ttl: int) -> None:
    """A UDP DNS server on ``address``:53: ``names`` (name -> IPv4) with ``ttl``; NXDOMAIN for others."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    ready()
    while True:
        data, client = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            continue
        reply = dns.message.make_response(query)
        question = query.question[0]
        target = names.get(question.name.to_text().rstrip(".").lower())
        if target is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, ttl, "IN", "A", target))
        sock.sendto(reply.to_wire(), client)
