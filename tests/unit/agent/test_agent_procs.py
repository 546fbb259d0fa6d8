"""Managed processes (proc_* ops) through the real agent process over a unix socket: they outlive the
stream and the connection that started them, are found by pid or tag, buffer output (bounded) while
nobody listens, take input, signals and resizes from later calls."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
from pathlib import Path

import pytest
from agent_harness import AgentProcess, pid_alive, wait_until

from clawpot.agent import processes
from clawpot.agent_client import AgentClient, Exited, Output, RemoteError, wait_ready
from clawpot.agent_client.procs import ProcSpec, Selector


async def _collect(proc: object) -> tuple[bytes, bytes, Exited]:
    out, err = bytearray(), bytearray()
    async for event in proc:  # type: ignore[attr-defined]
        if isinstance(event, Exited):
            return bytes(out), bytes(err), event
        (err if event.stream == "stderr" else out).extend(event.data)
    raise AssertionError("no end")


async def test_start_streams_output_and_exit(client: AgentClient) -> None:
    proc = await client.proc_start(ProcSpec(["sh", "-c", "printf out; printf err >&2; exit 3"]))
    out, err, end = await _collect(proc)
    assert (out, err, end.status.exit_code) == (b"out", b"err", 3)


async def test_process_outlives_its_stream_and_connection(agent: AgentProcess) -> None:
    first = await wait_ready(agent.endpoint, 10)
    proc = await first.proc_start(ProcSpec(["sh", "-c", "read x; echo got $x; exit 5"], tag="survivor"))
    pid = proc.pid
    proc.cancel()  # detach
    await first.close()  # and drop the whole connection
    assert pid is not None and pid_alive(pid)

    second = await wait_ready(agent.endpoint, 10)
    try:
        listed = {p.pid: p for p in await second.proc_list()}
        assert listed[pid].tag == "survivor"
        assert listed[pid].argv == ["sh", "-c", "read x; echo got $x; exit 5"]
        again = await second.proc_attach(Selector(tag="survivor"))
        assert again.pid == pid
        await second.proc_input(Selector(pid=pid), b"hello\n")
        out, _, end = await _collect(again)
        assert out == b"got hello\n"
        assert end.status.exit_code == 5
        # An exited process stays findable: a late attach learns how it ended.
        late = await second.proc_attach(Selector(pid=pid))
        _, _, end = await _collect(late)
        assert end.status.exit_code == 5
        assert pid not in {p.pid for p in await second.proc_list()}
    finally:
        await second.close()


async def test_output_is_buffered_while_nobody_listens(client: AgentClient) -> None:
    proc = await client.proc_start(ProcSpec(["sh", "-c", "echo one; read x; echo two"]))
    assert proc.pid is not None
    assert await anext(proc) == Output("stdout", b"one\n")
    proc.cancel()
    await client.proc_input(Selector(pid=proc.pid), b"\n")
    await asyncio.sleep(0.3)  # "two" is written while nobody listens
    again = await client.proc_attach(Selector(pid=proc.pid))
    out, _, end = await _collect(again)
    assert out == b"two\n"
    assert end.status.exit_code == 0


async def test_ring_keeps_only_the_last_bytes(client: AgentClient) -> None:
    # 3 MiB written while nobody listens: the ring keeps the last RING_BYTES of it.
    script = "head -c 3145728 /dev/zero | tr '\\0' a; printf END"
    proc = await client.proc_start(ProcSpec(["sh", "-c", script]))
    assert proc.pid is not None
    proc.cancel()
    await asyncio.sleep(1.0)
    again = await client.proc_attach(Selector(pid=proc.pid))
    out, _, end = await _collect(again)
    assert end.status.exit_code == 0
    assert len(out) == processes.RING_BYTES
    assert out.endswith(b"aaaEND")


async def test_timeout_kills_the_group(client: AgentClient) -> None:
    proc = await client.proc_start(ProcSpec(["sh", "-c", "sleep 30 & wait"], timeout=0.5))
    _, _, end = await _collect(proc)
    assert end.status.timed_out
    assert end.status.signal == signal.SIGKILL


async def test_signal_close_stdin_and_not_found(client: AgentClient) -> None:
    proc = await client.proc_start(ProcSpec(["cat"]))
    assert proc.pid is not None
    await client.proc_input(Selector(pid=proc.pid), b"abc")
    await client.proc_close_stdin(Selector(pid=proc.pid))
    out, _, end = await _collect(proc)
    assert (out, end.status.exit_code) == (b"abc", 0)

    sleeper = await client.proc_start(ProcSpec(["sleep", "30"]))
    assert sleeper.pid is not None
    await client.proc_signal(Selector(pid=sleeper.pid), signal.SIGTERM)
    _, _, end = await _collect(sleeper)
    assert end.status.signal == signal.SIGTERM

    with pytest.raises(RemoteError) as info:
        await client.proc_attach(Selector(tag="no-such-tag"))
    assert info.value.code == "not_found"
    with pytest.raises(RemoteError) as info:
        await client.proc_signal(Selector(pid=2**31 - 2), signal.SIGKILL)
    assert info.value.code == "not_found"


async def test_pty_resize_and_input(client: AgentClient) -> None:
    proc = await client.proc_start(
        ProcSpec(["sh", "-c", "stty size; read x; stty size; echo got $x"], pty=(24, 80))
    )
    assert proc.pid is not None
    first = await anext(proc)
    assert isinstance(first, Output) and b"24 80" in first.data
    await client.proc_resize(Selector(pid=proc.pid), 40, 100)
    await client.proc_input(Selector(pid=proc.pid), b"hi\n")
    out, _, end = await _collect(proc)
    assert b"40 100" in out and b"got hi" in out
    assert end.status.exit_code == 0


async def test_cwd_env_and_bad_requests(client: AgentClient, tmp_path: object) -> None:
    proc = await client.proc_start(
        ProcSpec(["sh", "-c", "pwd; echo $FOO; echo $HOME"], cwd="/tmp", env={"FOO": "bar"})
    )
    out, _, _ = await _collect(proc)
    lines = out.decode().splitlines()
    assert lines[:2] == ["/tmp", "bar"]
    assert lines[2] == pwd.getpwuid(os.getuid()).pw_dir  # the login basics of the agent's user
    with pytest.raises(RemoteError) as info:
        await client.proc_start(ProcSpec(["true"], cwd="/no/such/dir"))
    assert info.value.code == "bad_request" and "does not exist" in info.value.message
    with pytest.raises(RemoteError) as info:
        await client.proc_start(ProcSpec(["true"], user="no-such-user-xyz"))
    assert info.value.code == "unknown_user"


async def test_many_processes(client: AgentClient) -> None:
    procs = [await client.proc_start(ProcSpec(["sh", "-c", f"echo {i}"], tag=f"many-{i}")) for i in range(40)]
    results = await asyncio.gather(*(_collect(p) for p in procs))
    assert [r[0] for r in results] == [f"{i}\n".encode() for i in range(40)]
    assert wait_until(lambda: True)


def test_output_ring_bounds() -> None:
    ring = processes.OutputRing(10)
    ring.append(1, b"abcdef")
    ring.append(2, b"ghijkl")
    assert ring.size == 10 and ring.dropped == 2
    assert ring.drain() == [(1, b"cdef"), (2, b"ghijkl")]
    ring.append(1, b"x" * 25)
    assert ring.drain() == [(1, b"x" * 10)]
    assert ring.size == 0


def test_rings_share_one_budget() -> None:
    budget = processes.RingBudget(10)
    first, second = processes.OutputRing(8, budget), processes.OutputRing(8, budget)
    first.append(1, b"abcdef")
    second.append(1, b"123456")  # only 4 bytes left in the budget: the oldest 2 go
    assert (first.size, second.size, budget.used) == (6, 4, 10)
    assert second.drain() == [(1, b"3456")]
    assert budget.used == 6
    first.append(2, b"XYZ")  # the ring's own capacity (8) bounds it now
    assert first.drain() == [(1, b"bcdef"), (2, b"XYZ")]
    assert budget.used == 0


async def test_cwd_tilde_and_relative_are_under_home(client: AgentClient) -> None:
    home = str(Path(pwd.getpwuid(os.getuid()).pw_dir).resolve())  # noqa: ASYNC240 - one local lookup
    for cwd in ("~", "."):
        proc = await client.proc_start(ProcSpec(["pwd"], cwd=cwd))
        out, _, _ = await _collect(proc)
        assert out.decode().strip() == home


async def test_output_a_detached_listener_could_not_send_goes_to_the_next(client: AgentClient) -> None:
    from clawpot.agent_client import procs

    # A window of 4 bytes: "abcd" reaches this stream, "efgh" waits in the agent for credit.
    proc = await procs.start(client._conn, ProcSpec(["sh", "-c", "printf abcdefgh; read x"]), window=4)
    assert proc.pid is not None
    await asyncio.sleep(0.5)
    proc.cancel()
    again = await client.proc_attach(Selector(pid=proc.pid))
    await client.proc_input(Selector(pid=proc.pid), b"\n")
    out, _, end = await _collect(again)
    assert out == b"efgh" and end.status.exit_code == 0
