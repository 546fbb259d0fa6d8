"""Serial-line semantics: successive host connections over one endless byte stream.

The agent serves one end of a socketpair with ``--serial-fd`` (a serial line: host sessions start with a
HELLO and may follow each other without the agent noticing any disconnect). In front of the other end the
test plays the part of QEMU's virtio-serial chardev: a unix socket serving one client at a time, which
delivers output the agent wrote while nobody was connected to the *next* client — as measured on the real
device (docs/platform-notes.md §3). What cannot exist on a host is the virtio port itself (read() == 0
while no host is connected, SIGIO on reconnect): the in-VM tests cover that part.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import AgentProcess, kill_quietly, pid_alive, start_agent, stop_agent, wait_until

from clawpot.agent.protocol import HEADER, MAGIC, FrameType
from clawpot.agent_client import Output, SerialSocketEndpoint, wait_ready


class SerialRelay:
    def __init__(self, path: Path, line: socket.socket) -> None:
        self.path = path
        self._line = line
        self._pending = bytearray()
        self._client: asyncio.StreamWriter | None = None
        self._one_at_a_time = asyncio.Lock()
        self.stale_delivered = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._line_reader, self._line_writer = await asyncio.open_connection(sock=self._line)
        self._tasks.append(asyncio.create_task(self._from_agent()))
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _from_agent(self) -> None:
        while data := await self._line_reader.read(65536):
            if self._client is not None and not self._client.is_closing():
                self._client.write(data)
            else:
                self._pending += data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._one_at_a_time:
            if self._pending:
                self.stale_delivered += len(self._pending)
                writer.write(bytes(self._pending))
                self._pending.clear()
            self._client = writer
            try:
                while data := await reader.read(65536):
                    self._line_writer.write(data)
                    await self._line_writer.drain()
            except ConnectionError:
                pass
            finally:
                self._client = None
                writer.close()

    async def close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._line_writer.close()


@pytest.fixture
async def serial_agent(tmp_path: Path) -> AsyncIterator[tuple[SerialRelay, AgentProcess]]:
    ours, theirs = socket.socketpair()
    try:
        agent = start_agent(
            tmp_path, "--serial-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),), listen=False
        )
    finally:
        theirs.close()
    relay = SerialRelay(tmp_path / "serial.sock", ours)
    await relay.start()
    yield relay, agent
    await relay.close()
    log = agent.log_text()
    stop_agent(agent)
    assert "Traceback" not in log, log


async def test_next_host_skips_stale_output_and_old_sessions_die(
    serial_agent: tuple[SerialRelay, AgentProcess],
) -> None:
    relay, _agent = serial_agent
    endpoint = SerialSocketEndpoint(relay.path)
    first = await wait_ready(endpoint, 10)
    proc = await first.exec(["sh", "-c", "while :; do echo tick; sleep 0.01; done"], stdin=False)
    leader = proc.pid
    assert leader is not None
    try:
        assert isinstance(await anext(proc), Output)
        await first.close()  # the host goes away; on this line the agent cannot tell
        await asyncio.sleep(0.3)  # ticks keep coming and wait for the next host

        second = await wait_ready(endpoint, 10)
        async with second:
            assert relay.stale_delivered > 0, "the scenario produced no stale output"
            assert (await second.run(["echo", "fresh"])).stdout == b"fresh\n"
            # The new HELLO ended the previous host session and killed what it started.
            assert wait_until(lambda: not pid_alive(leader))
    finally:
        kill_quietly(leader)


async def test_host_that_died_mid_frame(serial_agent: tuple[SerialRelay, AgentProcess]) -> None:
    relay, _agent = serial_agent
    endpoint = SerialSocketEndpoint(relay.path)
    first = await wait_ready(endpoint, 10)
    assert (await first.run(["true"])).ok
    # A header cut short after its length's high bytes: the HELLO that follows would read as payload.
    _reader, writer = await asyncio.open_unix_connection(str(relay.path))
    await first.close()
    writer.write(HEADER.pack(MAGIC, FrameType.DATA, 0, 1, 40_000)[:10])
    await writer.drain()
    writer.close()

    async with await wait_ready(endpoint, 10) as second:
        assert (await second.run(["echo", "ok"])).stdout == b"ok\n"


async def test_agent_exits_when_the_line_closes(serial_agent: tuple[SerialRelay, AgentProcess]) -> None:
    relay, agent = serial_agent
    await relay.close()
    assert await asyncio.to_thread(agent.proc.wait, 10) == 0
