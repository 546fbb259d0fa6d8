"""The gateway's DNS forwarder over real sockets on loopback: a real upstream (dnspython, in this
process) and real queries. The VM lookup is a dict (the manager's part is shown in test_egress.py)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from clawpot import limits
from clawpot.network.dnsforward import DnsForwarder, Upstream, check_forwarder, system_upstreams
from clawpot.network.policy import EgressPolicy

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeUpstream(asyncio.DatagramProtocol):
    """A real UDP DNS server: every A query gets 10.0.0.7 with ``ttl``, after ``delay`` seconds."""

    ttl: int = 5
    delay: float = 0.0
    seen: int = 0
    concurrent: int = 0
    peak: int = 0
    transport: asyncio.DatagramTransport | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.reply(data)
        assert self.transport is not None
        self.transport.sendto(reply, addr)

    async def reply(self, data: bytes) -> bytes:
        self.seen += 1
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        try:
            await asyncio.sleep(self.delay)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text(query.question[0].name, self.ttl, "IN", "A", "10.0.0.7"))
            return reply.to_wire()
        finally:
            self.concurrent -= 1

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        reply = await self.reply(await reader.readexactly(size))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()


@dataclass
class Rig:
    forwarder: DnsForwarder
    upstream: FakeUpstream
    policies: dict[str, EgressPolicy]
    pins: list[tuple[str, str, list[str], int]]

    async def ask(self, name: str, *, tcp: bool = False) -> dns.message.Message:
        query = dns.message.make_query(name, dns.rdatatype.A)
        port = self.forwarder.port
        if tcp:
            return await dns.asyncquery.tcp(query, LOOPBACK, 5.0, port)
        return await dns.asyncquery.udp(query, LOOPBACK, 5.0, port)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream()
    up_transport, _ = await loop.create_datagram_endpoint(lambda: upstream, local_addr=(LOOPBACK, 0))
    up_port = up_transport.get_extra_info("sockname")[1]
    up_tcp = await asyncio.start_server(upstream.serve_tcp, LOOPBACK, up_port)
    policies: dict[str, EgressPolicy] = {LOOPBACK: EgressPolicy()}
    pins: list[tuple[str, str, list[str], int]] = []

    def lookup(address: str) -> tuple[str, EgressPolicy] | None:
        policy = policies.get(address)
        return None if policy is None else ("vm-1", policy)

    async def pin(vm_id: str, qname: str, addresses: list[str], ttl: int) -> None:
        pins.append((vm_id, qname, addresses, ttl))

    forwarder = DnsForwarder(LOOPBACK, [Upstream(LOOPBACK, up_port)], lookup, pin, port=free_port())
    await forwarder.start()
    try:
        yield Rig(forwarder, upstream, policies, pins)
    finally:
        await forwarder.close()
        up_transport.close()
        up_tcp.close()


async def test_forwards_a_query_over_udp_and_tcp(rig: Rig) -> None:
    for tcp in (False, True):
        reply = await rig.ask("svc.example.", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.address for r in reply.answer[0]] == ["10.0.0.7"]
    assert rig.upstream.seen == 2  # a TCP query goes upstream over TCP
    assert rig.pins == []  # the default policy pins nothing


async def test_allowed_domains_are_pinned_with_a_clamped_ttl_before_the_reply(rig: Rig) -> None:
    rig.policies[LOOPBACK] = EgressPolicy.parse(["example.com"], ["bad.example.com"])
    reply = await rig.ask("api.example.com.")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rig.pins == [("vm-1", "api.example.com.", ["10.0.0.7"], limits.DNS_PIN_MIN_TTL)]
    for name in ("bad.example.com.", "other.test."):
        assert (await rig.ask(name)).rcode() == dns.rcode.REFUSED
    assert rig.upstream.seen == 1


async def test_no_internet_and_unknown_clients_are_refused(rig: Rig) -> None:
    rig.policies[LOOPBACK] = EgressPolicy(no_internet=True)
    assert (await rig.ask("svc.example.")).rcode() == dns.rcode.REFUSED
    del rig.policies[LOOPBACK]
    assert (await rig.ask("svc.example.")).rcode() == dns.rcode.REFUSED
    assert rig.upstream.seen == 0


async def test_garbage_responses_and_oversized_datagrams_get_nothing_back(rig: Rig) -> None:
    response = dns.message.make_response(dns.message.make_query("x.example.", "A")).to_wire()
    for payload in (b"\x00", b"garbage" * 10, response, b"\x00" * (limits.DNS_MAX_REQUEST_BYTES + 1)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            sock.sendto(payload, (LOOPBACK, rig.forwarder.port))
            with pytest.raises(TimeoutError):
                sock.recv(4096)
    # Still serving.
    assert (await rig.ask("svc.example.")).rcode() == dns.rcode.NOERROR


async def test_two_questions_are_a_format_error(rig: Rig) -> None:
    query = dns.message.make_query("a.example.", "A")
    query.question.append(dns.message.make_query("b.example.", "A").question[0])
    reply = await dns.asyncquery.udp(query, LOOPBACK, 5, rig.forwarder.port)
    assert reply.rcode() == dns.rcode.FORMERR


async def test_a_dead_upstream_is_servfail(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "DNS_UPSTREAM_TIMEOUT", 0.3)
    rig.forwarder.upstreams = (Upstream(LOOPBACK, free_port()),)  # nothing listens there
    assert (await rig.ask("svc.example.")).rcode() == dns.rcode.SERVFAIL


async def test_queries_in_flight_are_bounded(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.upstream.delay = 0.5
    flood = limits.DNS_MAX_IN_FLIGHT * 3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(flood):
            query = dns.message.make_query(f"n{i}.example.", "A").to_wire()
            sock.sendto(query, (LOOPBACK, rig.forwarder.port))
        await asyncio.sleep(1.5)
    assert rig.upstream.peak <= limits.DNS_MAX_IN_FLIGHT
    assert rig.upstream.seen <= limits.DNS_MAX_IN_FLIGHT * 2  # the rest were dropped, not queued
    assert (await rig.ask("svc.example.")).rcode() == dns.rcode.NOERROR


async def test_tcp_message_over_the_bound_closes_the_connection(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, rig.forwarder.port)
    writer.write(struct.pack("!H", limits.DNS_MAX_REQUEST_BYTES + 1))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_check_forwarder_for_the_doctor(rig: Rig) -> None:
    # In a worker thread: the forwarder answers on this event loop. REFUSED (not a VM) counts as alive.
    assert await asyncio.to_thread(check_forwarder, LOOPBACK, rig.forwarder.port, 2.0) is None
    assert await asyncio.to_thread(check_forwarder, LOOPBACK, free_port(), 0.3) is not None


def test_upstreams_from_resolv_conf_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 192.168.100.1\nnameserver 10.0.0.53\nnameserver ::1\noptions edns0\n")
    assert system_upstreams("192.168.100.1", conf) == [Upstream("10.0.0.53"), Upstream("::1")]
    assert Upstream.parse("10.0.0.1:5353") == Upstream("10.0.0.1", 5353)
    assert Upstream.parse("::1") == Upstream("::1")
    for bad in ("dns.example", "10.0.0.1:0", "10.0.0.1:x"):
        with pytest.raises(ValueError):
            Upstream.parse(bad)
