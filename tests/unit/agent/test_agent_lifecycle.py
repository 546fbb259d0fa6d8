"""Starting and stopping the real agent process: READY line, shutdown, signals, inherited fds, bad options."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import kill_quietly, pid_alive, start_agent, stop_agent, wait_until

from clawpot.agent.power import may_power_off
from clawpot.agent.protocol import READY_LINE
from clawpot.agent_client import AgentClient, AgentDisconnected, wait_ready


async def test_shutdown_operation_stops_a_host_agent(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    try:
        client = await wait_ready(agent.endpoint, 10)
        proc = await client.exec(["sleep", "300"], stdin=False)
        assert proc.pid is not None
        child = proc.pid
        await client.shutdown()
        assert await asyncio.to_thread(agent.proc.wait, 10) == 0
        assert not pid_alive(child)
        assert not agent.socket.exists(), "the agent left its socket behind"
        assert "stopping: shutdown requested by the host" in agent.log_text()
    finally:
        stop_agent(agent)


async def test_sigterm_stops_the_agent_and_its_processes(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    try:
        client = await wait_ready(agent.endpoint, 10)
        proc = await client.exec(["sh", "-c", "trap '' TERM; sleep 300 & wait"], stdin=False)
        assert proc.pid is not None
        child = proc.pid
        agent.proc.send_signal(signal.SIGTERM)
        # The shell ignores SIGTERM: the agent escalates to SIGKILL after its grace period.
        assert await asyncio.to_thread(agent.proc.wait, 15) == 0
        assert wait_until(lambda: not pid_alive(child))
        with pytest.raises(AgentDisconnected):
            await client.run(["true"])
        await client.close()
    finally:
        kill_quietly(child)
        stop_agent(agent)


async def test_inherited_socket(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    try:
        agent = start_agent(tmp_path, "--fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),), listen=False)
    finally:
        theirs.close()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        client = await AgentClient.from_streams(reader, writer, name="socketpair")
        assert client.info.pid == agent.pid
        assert (await client.run(["echo", "over a socketpair"])).stdout == b"over a socketpair\n"
        await client.close()
        # Its only channel closed: the agent is done.
        assert await asyncio.to_thread(agent.proc.wait, 10) == 0
    finally:
        stop_agent(agent)


def test_ready_line_names_every_channel(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clawpot.agent",
            "--listen-unix",
            str(sock),
            "--listen-unix",
            str(tmp_path / "b.sock"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"{READY_LINE} unix:{sock} unix:{tmp_path / 'b.sock'}\n"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize(
    "args",
    [
        ["--serial", "/nonexistent/vport0p1"],
        ["--listen-unix", "/nonexistent-dir/agent.sock"],
        ["--vsock-port", "-5"],
        ["--fd", "1"],
        ["--fd", "987"],
    ],
)
def test_unusable_channel_is_one_error_line(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clawpot.agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert READY_LINE not in result.stdout
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line or ": error:" in line]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_listen_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "clawpot.agent", "--listen-unix", str(precious)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "exists and is not a socket" in result.stderr
    assert precious.read_text() == "keep me"


def test_power_off_only_for_the_guest_agent_under_init() -> None:
    assert may_power_off(True, pid=1, ppid=0)
    assert may_power_off(True, pid=77, ppid=1)
    assert not may_power_off(False, pid=1, ppid=0)
    assert not may_power_off(True, pid=77, ppid=76)
