"""Host-enforced time: an exec with a deadline ends by it whatever the agent does, and a transfer whose
agent stops moving fails instead of hanging.

The agent is the real one (``python -m clawpot.agent``, as in tests/unit/agent) on a unix socket; it is
wedged for real with SIGSTOP, so it can neither answer nor end the command.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.agent_harness import AgentProcess, pid_alive, start_agent, stop_agent, wait_until

from clawpot import errors, limits
from clawpot.agent_client import AgentClient, wait_ready
from clawpot.node.sessions import ExecSession, upload_watched


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    proc = start_agent(tmp_path / "agent")
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_agent(proc)


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[AgentClient]:
    c = await wait_ready(agent.endpoint, 10)
    yield c
    await c.close()


async def test_a_wedged_agent_cannot_hold_an_exec_past_its_deadline(
    agent: AgentProcess, client: AgentClient
) -> None:
    timeout = 1.0
    process = await client.exec(["sh", "-c", "echo started; exec sleep 600"], stdin=False, timeout=timeout)
    assert process.pid is not None
    lost: list[BaseException] = []
    loop = asyncio.get_running_loop()
    session = ExecSession(
        process,
        deadline=loop.time() + timeout + limits.EXEC_TIMEOUT_GRACE,
        timeout=timeout,
        on_lost=lost.append,
    )
    events = session.events()
    assert (await anext(events)).stdout == b"started\n"
    os.kill(agent.pid, signal.SIGSTOP)  # the agent's own timer cannot fire now
    started = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded, match="timed out after 1s"):
        await anext(events)
    waited = time.monotonic() - started
    assert waited <= timeout + limits.EXEC_TIMEOUT_GRACE + 0.5, waited
    assert not lost
    # The host asked for the kill (CANCEL) without waiting; once the agent runs again, it acts on it.
    os.kill(agent.pid, signal.SIGCONT)
    assert wait_until(lambda: not pid_alive(process.pid), timeout=10)  # type: ignore[arg-type]


async def test_without_a_wedge_the_agents_own_timeout_answers_first(client: AgentClient) -> None:
    process = await client.exec(["sleep", "600"], stdin=False, timeout=0.5)
    loop = asyncio.get_running_loop()
    session = ExecSession(process, deadline=loop.time() + 0.5 + limits.EXEC_TIMEOUT_GRACE, timeout=0.5)
    assert [e async for e in session.events()] == []
    with pytest.raises(errors.DeadlineExceeded, match="process group was killed"):
        await session.result()


async def test_an_agent_that_stops_taking_upload_data_times_out(
    agent: AgentProcess, client: AgentClient, tmp_path: Path
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            yield bytes(64 * 1024)

    os.kill(agent.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await upload_watched(
                lambda chunks: client.put_file(chunks, str(tmp_path / "f")), endless(), stall=1.0
            )
        assert time.monotonic() - started < 3
    finally:
        # Before the client closes: a connection with unsent data waits for the peer to read it.
        os.kill(agent.pid, signal.SIGCONT)


async def test_a_slow_client_is_not_a_stalled_agent(client: AgentClient, tmp_path: Path) -> None:
    async def slow() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0.6)  # longer than the stall bound, between chunks: the client's time
            yield b"abc"

    size = await upload_watched(
        lambda chunks: client.put_file(chunks, str(tmp_path / "g")), slow(), stall=0.5
    )
    assert size == 9 and (tmp_path / "g").read_bytes() == b"abcabcabc"
