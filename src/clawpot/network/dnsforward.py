"""The gateway's DNS forwarder: guests' queries to <gateway>:53 (udp and tcp), answered from upstream.

Guests' resolv.conf names the gateway (``NetworkSlot.dns``, the kernel's ``ip=`` and the agent's
``configure``). The forwarder runs inside the server rather than as a supervised dnsmasq because every
answer depends on who asks: the VM's egress policy decides whether a name resolves at all (a VM with
--no-internet or an allow list must not tunnel data out through DNS), and the addresses answered for
an allowed domain must be in that VM's nft set *before* the guest gets them (``pin``), or its first
connection would race the rule.

Guests are untrusted, so everything is bounded (``limits``: request size, queries in flight, TCP
connections and idle time, upstream timeout); a query that does not parse is dropped, one from an
address that is no VM's is refused. Queries are parsed and re-encoded by dnspython before they go
upstream, never passed through as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype

from clawpot import limits
from clawpot.agent.etcfiles import nameservers
from clawpot.network.policy import EgressPolicy

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
DNS_PORT = 53

# (vm_id, policy) of the VM at a guest address, or None for an address that is no VM's.
PolicyLookup = Callable[[str], "tuple[str, EgressPolicy] | None"]
# Pin (vm_id, query name, addresses, seconds): done when it returns.
Pinner = Callable[[str, str, list[str], int], Awaitable[None]]


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = DNS_PORT

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """``IP`` or ``IP:PORT`` (IPv4), or an IPv6 address alone."""
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            host, port = text, str(DNS_PORT)
        try:
            ip_address(host)
        except ValueError:
            raise ValueError(f"DNS upstream {text!r} is not an IP address (optionally :PORT)") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"DNS upstream {text!r}: bad port {port!r}")
        return cls(host, int(port))


def system_upstreams(exclude: str, resolv_conf: Path = RESOLV_CONF) -> list[Upstream]:
    """The host's resolvers from resolv.conf, minus the gateway itself (that would loop)."""
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    return [Upstream(s) for s in nameservers(text) if s != exclude and _is_ip(s)]


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


class DnsForwarder:
    def __init__(
        self,
        address: IPv4Address | str,
        upstreams: Sequence[Upstream],
        lookup: PolicyLookup,
        pin: Pinner,
        *,
        port: int = DNS_PORT,
    ) -> None:
        self.address = str(address)
        self.port = port
        self.upstreams = tuple(upstreams)
        self._lookup = lookup
        self._pin = pin
        self._slots = asyncio.Semaphore(limits.DNS_MAX_IN_FLIGHT)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients = 0

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.address, self.port)
        )
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, self.address, self.port, limit=limits.DNS_MAX_REQUEST_BYTES + 2
            )
        except BaseException:
            transport.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 5)

    # -- transports -------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        # Full: drop (the guest's resolver retries) rather than queue without bound.
        if len(data) > limits.DNS_MAX_REQUEST_BYTES or self._in_flight >= limits.DNS_MAX_IN_FLIGHT:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._udp_answer(data, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_answer(self, data: bytes, client: tuple[str, int]) -> None:
        try:
            reply = await self.answer(data, client[0], tcp=False)
            if reply is not None and self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(reply, client)
        except Exception:
            log.exception("DNS: answering %s failed", client[0])
        finally:
            self._in_flight -= 1

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._tcp_clients += 1
        try:
            if self._tcp_clients > limits.DNS_MAX_TCP_CONNECTIONS:
                return
            client = str(writer.get_extra_info("peername")[0])
            while True:
                async with asyncio.timeout(limits.DNS_TCP_IDLE_TIMEOUT):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    if size > limits.DNS_MAX_REQUEST_BYTES:
                        return
                    data = await reader.readexactly(size)
                async with self._slots:
                    reply = await self.answer(data, client, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with asyncio.timeout(limits.DNS_TCP_IDLE_TIMEOUT):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("DNS: a TCP client failed")
        finally:
            self._tcp_clients -= 1
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    # -- one query --------------------------------------------------------------------------------

    async def answer(self, data: bytes, client: str, *, tcp: bool) -> bytes | None:
        """The reply to one query from guest address ``client`` (None: send nothing)."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer one (no reflection loops)
        if len(query.question) != 1 or query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.FORMERR)
        found = self._lookup(client)
        qname = query.question[0].name.to_text()
        if found is None or not found[1].resolves(qname):
            return _reply(query, dns.rcode.REFUSED)
        vm_id, policy = found
        response = await self._forward(query, tcp)
        if response is None:
            return _reply(query, dns.rcode.SERVFAIL)
        if policy.pins(qname):
            addresses, ttl = _a_records(response)
            if addresses:
                try:
                    await self._pin(vm_id, qname, addresses, ttl)
                except Exception as exc:
                    log.warning("DNS: cannot pin %s for VM %s: %s", qname, vm_id, exc)
                    return _reply(query, dns.rcode.SERVFAIL)
        return response.to_wire(max_size=65535)

    async def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message | None:
        for upstream in self.upstreams:
            try:
                if tcp:
                    return await dns.asyncquery.tcp(
                        query, upstream.host, limits.DNS_UPSTREAM_TIMEOUT, upstream.port
                    )
                return await dns.asyncquery.udp(
                    query, upstream.host, limits.DNS_UPSTREAM_TIMEOUT, upstream.port
                )
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                log.debug("DNS: upstream %s failed: %s", upstream.host, exc)
        return None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forwarder._on_datagram(data, addr)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    return reply.to_wire()


def _a_records(response: dns.message.Message) -> tuple[list[str], int]:
    """IPv4 addresses in the answer (CNAME chains included) and their TTL, clamped (``limits``)."""
    addresses: list[str] = []
    ttl = limits.DNS_PIN_MAX_TTL
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.A:
            addresses += [rdata.address for rdata in rrset]
            ttl = min(ttl, rrset.ttl)
    return addresses, max(limits.DNS_PIN_MIN_TTL, min(ttl, limits.DNS_PIN_MAX_TTL))


def check_forwarder(address: str, port: int = DNS_PORT, timeout: float = 2.0) -> str | None:
    """For ``clawpot doctor``: None if a forwarder answers at ``address:port`` (REFUSED counts: it
    refuses hosts that are no VM), else why not."""
    query = dns.message.make_query("clawpot-doctor.invalid.", dns.rdatatype.A)
    try:
        dns.query.udp(query, address, timeout=timeout, port=port)
    except dns.exception.Timeout:
        return f"no DNS answer from {address}:{port} within {timeout:.0f} s"
    except (dns.exception.DNSException, OSError) as exc:
        return f"DNS query to {address}:{port} failed: {exc}"
    return None
