"""A hostile agent for the host-side client, over a real unix socketpair.

The fake is the guest end only: the host side under test is the real ``AgentClient`` on the real socket.
The peer runs in a thread with a blocking socket, so it can flood while the host's event loop reads, and
never reads unless a scenario asks it to (like the attacker in the issue, who never read the PONGs).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from clawpot.agent.protocol import HELLO, encode_frame, encode_json, welcome_line
from clawpot.agent_client import AgentClient
from clawpot.agent_client.connection import AgentConnection

# Small socket buffers: a peer that does not read makes the host's writes back up at once.
_SOCKET_BUFFER = 16 * 1024


@dataclass
class Peer:
    sock: socket.socket
    error: BaseException | None = None
    sent_frames: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def handshake(self) -> None:
        data = b""
        while b"\n" not in data[data.find(HELLO) :] or HELLO not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("host went away before its HELLO")
            data += chunk
        line = data[data.find(HELLO) :].split(b"\n", 1)[0]
        nonce = line.split(b" ")[3].decode()
        self.sock.sendall(welcome_line(nonce, 1, {"pid": 1, "hostname": "evil", "guest": True}))

    def send(self, ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        self.sock.sendall(encode_frame(ftype, stream, payload, flags))
        self.sent_frames += 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flood(self, frame: bytes, count: int) -> None:
        """Send ``frame`` up to ``count`` times, stopping quietly when the host drops us."""
        with contextlib.suppress(OSError):
            for _ in range(count):
                if self._stop.is_set():
                    return
                self.sock.sendall(frame)
                self.sent_frames += 1

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


Scenario = Callable[[Peer], None]


@dataclass
class Hostile:
    client: AgentClient
    peer: Peer
    max_buffered: int = 0
    max_unsent: int = 0

    @property
    def conn(self) -> AgentConnection:
        return self.client._conn

    async def send(self, ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        """Send from the peer without blocking the host's event loop (the socket buffers are small)."""
        await asyncio.to_thread(self.peer.send, ftype, stream, payload, flags)

    async def send_raw(self, data: bytes) -> None:
        await asyncio.to_thread(self.peer.send_raw, data)


@contextlib.asynccontextmanager
async def hostile_agent(scenario: Scenario, *, handshake: bool = True) -> AsyncIterator[Hostile]:
    """Connect a real ``AgentClient`` to a peer that runs ``scenario`` after the handshake.

    The yielded ``Hostile`` records the most the connection ever held (checked after every frame).
    """
    host_sock, guest_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (host_sock, guest_sock):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
    peer = Peer(guest_sock)

    def run() -> None:
        try:
            if handshake:
                peer.handshake()
            scenario(peer)
        except OSError:
            pass  # the host dropped us: what most scenarios are after
        except BaseException as exc:  # reported by the test, in the host's task
            peer.error = exc

    thread = threading.Thread(target=run, name="hostile-peer", daemon=True)
    thread.start()
    reader, writer = await asyncio.open_unix_connection(sock=host_sock, limit=1 << 20)
    try:
        client = await AgentClient.from_streams(reader, writer, name="hostile peer", handshake_timeout=10)
    except BaseException:
        guest_sock.close()
        await asyncio.to_thread(thread.join, 10)
        raise
    hostile = Hostile(client, peer)
    conn = client._conn
    dispatch = conn._dispatch

    def measured(frame: object) -> None:
        dispatch(frame)  # type: ignore[arg-type]
        hostile.max_buffered = max(hostile.max_buffered, conn.buffered)
        hostile.max_unsent = max(hostile.max_unsent, writer.transport.get_write_buffer_size())

    conn._dispatch = measured  # type: ignore[method-assign]
    try:
        yield hostile
    finally:
        peer._stop.set()
        await client.close()
        with contextlib.suppress(OSError):
            guest_sock.shutdown(socket.SHUT_RDWR)  # wakes a peer blocked in send
        await asyncio.to_thread(thread.join, 10)
        guest_sock.close()
        assert not thread.is_alive(), "the hostile peer did not stop"
        if peer.error is not None:
            raise peer.error


def json_payload(obj: dict[str, object]) -> bytes:
    return encode_json(obj)
