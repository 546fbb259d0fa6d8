"""Open the byte stream to an agent endpoint (one attempt; callers put a deadline around it).

Firecracker's hybrid vsock is a unix socket on which the host first asks for a guest port with
``CONNECT <port>\\n`` and gets ``OK <host port>\\n`` once the guest accepted. Before the guest's vsock
driver is up Firecracker accepts the request and then says nothing at all, so the caller's deadline is
the only way out; on a refusal it closes the socket.
"""

from __future__ import annotations

import asyncio
import re
import socket

from clawpot.agent_client.endpoints import (
    AgentEndpoint,
    HybridVsockEndpoint,
    SerialSocketEndpoint,
    UnixSocketEndpoint,
    VsockEndpoint,
)

_STREAM_LIMIT = 1 << 20
_OK_LINE = re.compile(rb"OK \d+\n")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stream(endpoint: AgentEndpoint) -> Streams:
    """Connect the underlying socket (for hybrid vsock: before the CONNECT exchange)."""
    match endpoint:
        case (
            HybridVsockEndpoint(uds_path=path)
            | SerialSocketEndpoint(path=path)
            | UnixSocketEndpoint(path=path)
        ):
            return await asyncio.open_unix_connection(str(path), limit=_STREAM_LIMIT)
        case VsockEndpoint(cid=cid, port=port):
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (cid, port))
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, limit=_STREAM_LIMIT)
    raise TypeError(f"not an agent endpoint: {endpoint!r}")


async def hybrid_vsock_connect(streams: Streams, port: int) -> None:
    """Ask Firecracker to connect us to guest ``port``; raises ConnectionError when it refuses."""
    reader, writer = streams
    writer.write(f"CONNECT {port}\n".encode())
    await writer.drain()
    line = await reader.readline()
    if not line:
        raise ConnectionResetError(f"CONNECT {port} refused (nothing listening on guest port {port} yet?)")
    if not _OK_LINE.fullmatch(line):
        raise ConnectionError(f"unexpected reply to CONNECT {port}: {line[:80]!r}")
