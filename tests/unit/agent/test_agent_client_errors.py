"""How the client reports an agent that appears late, dies, or goes away mid-operation."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from agent_harness import start_agent, stop_agent

from clawpot.agent_client import AgentDisconnected, RemoteError, UnixSocketEndpoint, wait_ready


async def test_wait_ready_until_the_agent_comes_up(tmp_path: Path) -> None:
    endpoint = UnixSocketEndpoint(tmp_path / "agent.sock")
    waiting = asyncio.create_task(wait_ready(endpoint, 30, retry_interval=0.05))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    agent = await asyncio.to_thread(start_agent, tmp_path)
    try:
        async with await waiting as client:
            assert (await client.run(["true"])).ok
    finally:
        stop_agent(agent)


async def test_agent_dying_mid_exec(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    try:
        client = await wait_ready(agent.endpoint, 10)
        proc = await client.exec(["sleep", "300"], stdin=False)
        pending_ping = asyncio.create_task(client.ping())
        await pending_ping
        agent.proc.send_signal(signal.SIGKILL)
        with pytest.raises(AgentDisconnected, match=r"connection to agent at unix socket .* lost: "):
            await proc.wait()
        with pytest.raises(AgentDisconnected):
            await client.run(["true"])
        assert not client.connected
        await client.close()
    finally:
        stop_agent(agent)


async def test_upload_to_a_missing_directory_is_a_remote_error(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    try:
        async with await wait_ready(agent.endpoint, 10) as client:
            with pytest.raises(RemoteError) as caught:
                await client.put_file(b"x" * 1_000_000, str(tmp_path / "no" / "such" / "dir" / "f"))
            assert caught.value.code == "io_error"
            assert "No such file or directory" in caught.value.message
            with pytest.raises(RemoteError) as missing:
                await client.get_file(str(tmp_path / "absent"), tmp_path / "local")
            assert missing.value.code == "io_error"
            leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob("*local*")))
            assert not leftovers, "partial download left behind"
    finally:
        stop_agent(agent)
