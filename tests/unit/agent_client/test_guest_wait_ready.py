"""wait_ready against endpoints where no agent answers: it must give up at its deadline with one clear
error, never hang. (Firecracker's hybrid vsock: tests/integration/test_agent_hybrid_vsock.py.)"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawpot.agent_client import AgentUnreachable, SerialSocketEndpoint, UnixSocketEndpoint, wait_ready


async def test_nothing_listening(tmp_path: Path) -> None:
    endpoint = UnixSocketEndpoint(tmp_path / "missing.sock")
    started = time.monotonic()
    with pytest.raises(AgentUnreachable) as caught:
        async with asyncio.timeout(10):
            await wait_ready(endpoint, 0.5, retry_interval=0.05)
    message = str(caught.value)
    assert message.startswith(f"agent not reachable at unix socket {endpoint.path} after 0.5 s: ")
    assert "No such file or directory" in message
    assert caught.value.attempts > 1  # it kept retrying until the deadline
    assert time.monotonic() - started >= 0.5


@pytest.fixture
async def silent_listener(tmp_path: Path) -> AsyncIterator[tuple[Path, list[bytes]]]:
    """A unix socket that accepts and reads, but never answers (like a guest whose agent is not up)."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            received.append(data)

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(swallow, path=str(path))
    yield path, received
    server.close()
    for writer in writers:
        writer.close()


async def test_listener_that_never_answers(silent_listener: tuple[Path, list[bytes]]) -> None:
    path, received = silent_listener
    with pytest.raises(AgentUnreachable) as caught:
        async with asyncio.timeout(10):
            await wait_ready(UnixSocketEndpoint(path), 1.0, attempt_timeout=0.3, retry_interval=0.05)
    assert re.search(r"after 1 s: no reply to CLAWPOT-HELLO within [0-9.]+ s", str(caught.value))
    assert caught.value.attempts >= 2  # fresh connections, one per attempt
    assert b"".join(received).startswith(b"CLAWPOT-HELLO 1 1 ")


async def test_serial_socket_waits_on_one_connection_and_hints(
    silent_listener: tuple[Path, list[bytes]],
) -> None:
    path, received = silent_listener
    with pytest.raises(AgentUnreachable) as caught:
        async with asyncio.timeout(10):
            await wait_ready(SerialSocketEndpoint(path), 1.0)
    assert caught.value.attempts == 1
    assert "is another client connected?" in str(caught.value)
    data = b"".join(received)
    # A serial line gets the resynchronising filler (all zeros) before the HELLO.
    assert data.rstrip(b"\n").split(b"\0")[-1].startswith(b"CLAWPOT-HELLO ")
