"""exec through the real agent process over a unix socket, running real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from agent_harness import AgentProcess, kill_quietly, pid_alive, wait_until

from clawpot.agent_client import AgentClient, Exited, Output, PtySize, RemoteError, wait_ready


async def test_exit_codes(client: AgentClient) -> None:
    assert (await client.run(["true"])).exit_code == 0
    result = await client.run(["sh", "-c", "exit 7"])
    assert result.exit_code == 7
    assert result.status.signal is None
    assert not result.ok


async def test_stdout_and_stderr_stay_separate(client: AgentClient) -> None:
    result = await client.run(["sh", "-c", "printf out1; printf err1 >&2; printf out2"])
    assert result.stdout == b"out1out2"
    assert result.stderr == b"err1"


async def test_binary_stdin_round_trip(client: AgentClient) -> None:
    data = bytes(range(256)) * 4096 + os.urandom(100_000)
    result = await client.run(["cat"], input=data)
    assert result.ok
    assert result.stdout == data


async def test_stdin_is_streamed(client: AgentClient) -> None:
    proc = await client.exec(["cat"])
    async with proc:
        for word in (b"one\n", b"two\n", b"three\n"):
            await proc.write(word)
            # The echo arrives before we send the next word: stdin and stdout really stream.
            event = await anext(proc)
            assert event == Output("stdout", word)
        await proc.close_stdin()
        status = await proc.wait()
    assert status.exit_code == 0


async def test_no_stdin_means_dev_null(client: AgentClient) -> None:
    result = await client.run(["cat"])
    assert result.ok
    assert result.stdout == b""


async def test_killed_by_signal(client: AgentClient) -> None:
    result = await client.run(["sh", "-c", "kill -TERM $$"])
    assert result.exit_code is None
    assert result.status.signal == signal.SIGTERM


async def test_signal_from_caller(client: AgentClient) -> None:
    proc = await client.exec(["sleep", "300"], stdin=False)
    assert proc.pid is not None and pid_alive(proc.pid)
    await proc.signal(signal.SIGUSR1)
    status = await proc.wait()
    assert status.signal == signal.SIGUSR1
    assert not status.timed_out


async def test_env_and_cwd(client: AgentClient, tmp_path: Path) -> None:
    result = await client.run(
        ["sh", "-c", 'printf "%s|%s" "$GREETING" "$(pwd)"'], env={"GREETING": "hi there"}, cwd=str(tmp_path)
    )
    assert result.stdout == f"hi there|{tmp_path}".encode()
    cleared = await client.run(["/usr/bin/env"], env={"ONLY": "1"}, clear_env=True)
    assert cleared.stdout == b"ONLY=1\n"


async def test_shell_only_when_asked(client: AgentClient) -> None:
    assert (await client.run("echo $((40 + 2))", shell=True)).stdout == b"42\n"
    # Without a shell the string is one argv element: no expansion happens.
    assert (await client.run(["echo", "$((40 + 2))"])).stdout == b"$((40 + 2))\n"


async def test_a_missing_program_exits_127_like_a_shell(client: AgentClient, tmp_path: Path) -> None:
    missing = await client.run(["/nonexistent/program", "arg"])
    assert (missing.exit_code, missing.status.signal, missing.status.timed_out) == (127, None, False)
    assert missing.stdout == b""
    assert missing.stderr == b"clawpot: /nonexistent/program: No such file or directory\n"
    # A bare name is looked up in PATH, and the message says so as sh does.
    not_found = await client.run(["no-such-command-xyz"])
    assert not_found.exit_code == 127
    assert not_found.stderr == b"clawpot: no-such-command-xyz: command not found\n"
    # The same words a shell uses for the same case, and the same code.
    shell = await client.run("no-such-command-xyz", shell=True)
    assert shell.exit_code == 127 and b"no-such-command-xyz: not found" in shell.stderr
    proc = await client.exec(["no-such-command-xyz"])
    assert proc.pid is None  # nothing was started
    async with proc:
        assert (await proc.wait()).exit_code == 127
    # The message respects the credit the host opened the stream with.
    small = await client.exec(["no-such-command-xyz"], window=8)
    events = [event async for event in small]
    assert events[:-1] == [Output("stderr", b"clawpot:")]
    assert isinstance(events[-1], Exited) and events[-1].status.exit_code == 127


async def test_a_file_that_cannot_be_executed_exits_126(client: AgentClient, tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("not a program\n")
    result = await client.run([str(plain)])
    assert result.exit_code == 126
    assert result.stderr == f"clawpot: {plain}: Permission denied\n".encode()
    directory = await client.run([str(tmp_path)])
    assert directory.exit_code == 126 and directory.stderr.startswith(f"clawpot: {tmp_path}: ".encode())


async def test_exec_failure_with_a_pty_goes_to_the_terminal(client: AgentClient) -> None:
    result = await client.run(["no-such-command-xyz"], pty=PtySize(rows=24, cols=80))
    assert result.exit_code == 127
    assert result.stdout == b"clawpot: no-such-command-xyz: command not found\r\n"
    assert result.stderr == b""


async def test_a_bad_cwd_is_still_an_error(client: AgentClient, tmp_path: Path) -> None:
    # Not the program's failure: the request named a directory that does not exist.
    with pytest.raises(RemoteError) as bad_cwd:
        await client.run(["true"], cwd=str(tmp_path / "missing"))
    assert bad_cwd.value.code == "spawn_failed"
    assert str(tmp_path / "missing") in bad_cwd.value.message
    assert (await client.run(["true"])).ok  # the connection carries on


async def test_pty_with_window_size_and_resize(client: AgentClient) -> None:
    result = await client.run(
        ["sh", "-c", "test -t 0 && test -t 1 && test -t 2 && stty size"], pty=PtySize(rows=40, cols=120)
    )
    assert result.ok, result
    assert result.stdout == b"40 120\r\n"

    proc = await client.exec(["sh", "-c", "stty size; read line; stty size"], pty=PtySize(10, 20))
    async with proc:
        seen = b""
        while b"10 20" not in seen:
            event = await anext(proc)
            assert isinstance(event, Output)
            seen += event.data
        await proc.resize(30, 90)
        await proc.write(b"go\n")
        seen = b""
        async for event in proc:
            if isinstance(event, Output):
                seen += event.data
    assert b"30 90" in seen
    assert proc.status is not None and proc.status.exit_code == 0


async def test_pty_stdin_eof(client: AgentClient) -> None:
    proc = await client.exec(["cat"], pty=True)
    async with proc:
        await proc.write(b"typed\n")
        await proc.close_stdin()
        out = b"".join([e.data async for e in proc if isinstance(e, Output)])
    assert proc.status is not None and proc.status.exit_code == 0
    assert b"typed" in out


async def test_timeout_kills_the_whole_process_group(client: AgentClient) -> None:
    proc = await client.exec(
        ["sh", "-c", "sleep 300 & echo $!; sleep 300 & echo $!; wait"], stdin=False, timeout=1.0
    )
    pids: list[int] = []
    buffered = b""
    async with proc:
        async for event in proc:
            if isinstance(event, Output):
                buffered += event.data
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    pids.append(int(line))
                    assert pid_alive(pids[-1])  # the background sleeps did run
            else:
                status = event.status
    assert status.timed_out
    assert status.signal == signal.SIGKILL
    assert len(pids) == 2
    assert proc.pid is not None
    group = proc.pid
    try:
        assert wait_until(lambda: not any(pid_alive(p) for p in [*pids, group]), timeout=10)
        assert not _live_members(group)
    finally:
        for pid in pids:
            kill_quietly(pid)


def _live_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


async def test_ten_concurrent_execs(client: AgentClient, tmp_path: Path) -> None:
    # Each process waits until all ten have started: this can only finish if they run at the same time.
    script = (
        'touch "$0/$1"; n=0; while [ "$(ls "$0" | wc -l)" -lt 10 ]; do sleep 0.05; n=$((n+1)); '
        '[ $n -gt 600 ] && exit 9; done; echo "done $1"'
    )
    results = await asyncio.gather(
        *(client.run(["sh", "-c", script, str(tmp_path), str(i)]) for i in range(10))
    )
    assert [r.exit_code for r in results] == [0] * 10
    assert [r.stdout for r in results] == [f"done {i}\n".encode() for i in range(10)]


async def test_caller_disconnect_kills_processes_and_leaves_no_zombies(agent: AgentProcess) -> None:
    client = await wait_ready(agent.endpoint, 10)
    proc = await client.exec(["sh", "-c", "sleep 300 & echo $!; exec sleep 301"], stdin=False)
    event = await anext(proc)
    assert isinstance(event, Output)
    background = int(event.data.split()[0])
    leader = proc.pid
    assert leader is not None and pid_alive(leader) and pid_alive(background)
    await client.close()  # the caller goes away mid-exec
    try:
        assert wait_until(lambda: not pid_alive(leader) and not pid_alive(background))
        # The agent reaped its own child: no zombie entry left either.
        assert wait_until(lambda: not Path(f"/proc/{leader}").exists())
        assert wait_until(lambda: not [c for c in agent.children() if c[1] == "Z"])
    finally:
        kill_quietly(background)
        kill_quietly(leader)
    # The agent itself is fine and serves the next caller.
    async with await wait_ready(agent.endpoint, 10) as again:
        assert (await again.run(["true"])).ok


async def test_cancel_kills_and_stream_is_forgotten(client: AgentClient) -> None:
    proc = await client.exec(["sleep", "300"], stdin=False)
    assert proc.pid is not None
    pid = proc.pid
    proc.cancel()
    assert wait_until(lambda: not pid_alive(pid))
    assert (await client.run(["true"])).ok


async def test_events_end_with_exited(client: AgentClient) -> None:
    proc = await client.exec(["echo", "x"], stdin=False)
    events = [e async for e in proc]
    assert events[-1] == Exited(proc.status) if proc.status else False
    assert [e for e in events if isinstance(e, Output)] == [Output("stdout", b"x\n")]


async def test_writing_to_a_finished_process(client: AgentClient) -> None:
    proc = await client.exec(["true"])
    assert (await proc.wait()).ok
    with pytest.raises(RemoteError) as caught:
        await proc.write(b"too late")
    assert caught.value.code == "session_ended"
    assert (await client.run(["true"])).ok
