"""``QmpControl``'s kept connection against a scripted QMP peer (a unix socket server in the test): what
a real QEMU does not do on demand (never answer, flood events, send a giant line, hang up). A real QEMU
is driven through the same class in tests/integration/test_qemu_process.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from clawpot import limits
from clawpot.vmm.qemu.qmp import QmpControl, QmpError

GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\n'
Behaviour = Callable[[dict[str, object], asyncio.StreamWriter], bytes | None]


class Peer:
    """A QMP peer: greets, then answers each command line with ``behaviour`` (None: no answer)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(GREETING)
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message["execute"] == "qmp_capabilities":
                    writer.write(json.dumps({"return": {}, "id": message["id"]}).encode() + b"\n")
                elif (reply := self.behaviour(message, writer)) is not None:
                    writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def answer(message: dict[str, object], writer: asyncio.StreamWriter) -> bytes:
    return json.dumps({"return": {"status": "running"}, "id": message["id"]}).encode() + b"\n"


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[Peer, Path]]:
    p = Peer(answer)
    path = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(p.serve, str(path))
    try:
        yield p, path
    finally:
        server.close()


async def test_one_connection_serves_every_command(peer: tuple[Peer, Path]) -> None:
    p, path = peer
    qmp = QmpControl(path, persistent=True)
    for _ in range(20):
        assert await qmp.status() == "running"
    assert p.connections == 1
    qmp.close()
    once = QmpControl(path)  # not persistent: a connection per call
    await once.status()
    await once.status()
    assert p.connections == 3


async def test_events_in_between_are_drained(peer: tuple[Peer, Path]) -> None:
    p, path = peer

    def flood(message: dict[str, object], writer: asyncio.StreamWriter) -> bytes:
        events = b"".join(b'{"event": "RTC_CHANGE", "data": {"offset": %d}}\n' % i for i in range(500))
        return events + answer(message, writer) + events

    p.behaviour = flood
    qmp = QmpControl(path, persistent=True)
    for _ in range(5):
        assert await qmp.status() == "running"
    qmp.close()


async def test_a_silent_peer_times_out_and_the_next_call_reconnects(peer: tuple[Peer, Path]) -> None:
    p, path = peer
    p.behaviour = lambda m, w: None
    qmp = QmpControl(path, timeout=0.3, persistent=True)
    with pytest.raises(QmpError, match="query-status"):
        await qmp.status()
    p.behaviour = answer
    assert await qmp.status() == "running"
    assert p.connections == 2  # the stalled connection was dropped, a new one made
    qmp.close()


async def test_a_giant_line_or_a_hang_up_ends_the_connection_not_the_control(peer: tuple[Peer, Path]) -> None:
    p, path = peer
    p.behaviour = lambda m, w: b"x" * (limits.QMP_MAX_LINE + 2)
    qmp = QmpControl(path, timeout=5.0, persistent=True)
    with pytest.raises(QmpError, match="closed the connection"):
        await qmp.status()

    def hang_up(message: dict[str, object], writer: asyncio.StreamWriter) -> None:
        writer.close()
        return None

    p.behaviour = hang_up
    with pytest.raises(QmpError, match="closed the connection"):
        await qmp.status()
    p.behaviour = answer
    assert await qmp.status() == "running"
    qmp.close()


async def test_a_closed_connection_never_disturbs_the_socket_that_reuses_its_fd(
    peer: tuple[Peer, Path], tmp_path: Path
) -> None:
    """Regression: closing the socket while the loop still watched its fd let the next socket (an
    agent connection, in the real case) get the same number, and lose its reader when the cancelled
    read was cleaned up: the agent then never answered."""
    _, path = peer

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    echo_path = tmp_path / "echo.sock"
    server = await asyncio.start_unix_server(echo, str(echo_path))
    try:
        once = QmpControl(path)  # closes its connection after every call
        for _ in range(20):
            assert await once.status() == "running"
            reader, writer = await asyncio.open_unix_connection(str(echo_path))
            writer.write(b"ping\n")
            async with asyncio.timeout(2):
                assert await reader.readline() == b"ping\n"
            writer.close()
    finally:
        server.close()
