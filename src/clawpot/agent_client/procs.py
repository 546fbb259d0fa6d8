"""Managed processes (the agent's ``proc_*`` operations): processes that outlive the call that started them.

``start`` and ``attach`` return an ``ExecProcess`` (the same events as ``exec``: output, then ``Exited``);
closing it detaches, the process runs on. ``list_processes``, ``send_input``, ``close_stdin``,
``send_signal`` and ``resize`` act on a process found by pid or tag, from any call. Every answer of the
agent is bounded like any other stream (``connection.py``) and checked field by field before use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clawpot import limits
from clawpot.agent.protocol import FrameType, Pipe
from clawpot.agent_client.connection import RECEIVE_WINDOW, AgentConnection, Stream, guest_int, guest_json
from clawpot.agent_client.errors import ProtocolError
from clawpot.agent_client.process import ExecProcess


@dataclass(frozen=True)
class Selector:
    """Which managed process: by ``pid`` or by ``tag`` (exactly one)."""

    pid: int | None = None
    tag: str | None = None

    def request(self) -> dict[str, Any]:
        if (self.pid is None) == (self.tag is None):
            raise ValueError("a process is selected by exactly one of pid and tag")
        return {"pid": self.pid} if self.pid is not None else {"tag": self.tag}


@dataclass(frozen=True)
class ProcSpec:
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    user: str | None = None
    pty: tuple[int, int] | None = None  # rows, cols
    stdin: bool = True
    timeout: float | None = None
    tag: str | None = None

    def request(self) -> dict[str, Any]:
        req: dict[str, Any] = {"op": "proc_start", "argv": list(self.argv), "stdin": self.stdin}
        if self.env:
            req["env"] = dict(self.env)
        for key in ("cwd", "user", "timeout", "tag"):
            if (value := getattr(self, key)) is not None:
                req[key] = value
        if self.pty is not None:
            req["pty"] = {"rows": self.pty[0], "cols": self.pty[1]}
        return req


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    tag: str | None
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    pty: bool


async def _opened(stream: Stream) -> ExecProcess:
    try:
        info = guest_json(await stream.recv_until(FrameType.INFO), "process info")
        pid = guest_int(info, "pid", 1, 2**31 - 1, "process info")
    except BaseException:
        stream.close()
        raise
    return ExecProcess(stream, pid, info.get("pty") is True)


async def start(conn: AgentConnection, spec: ProcSpec, window: int = RECEIVE_WINDOW) -> ExecProcess:
    """Start a managed process; RemoteError ``spawn_failed`` / ``bad_request`` if it cannot start."""
    return await _opened(conn.open_stream(spec.request(), window))


async def attach(conn: AgentConnection, selector: Selector, window: int = RECEIVE_WINDOW) -> ExecProcess:
    """Listen to a managed process: what it wrote while nobody listened, then live output and its end.
    RemoteError ``not_found`` if no process has that pid or tag."""
    stream = conn.open_stream({"op": "proc_attach", **selector.request()}, window)
    return await _opened(stream)


async def _unary(conn: AgentConnection, request: dict[str, Any]) -> dict[str, Any]:
    stream = conn.open_stream(request)
    try:
        async with asyncio.timeout(limits.AGENT_PROC_CALL_TIMEOUT):
            return guest_json(await stream.recv_until(FrameType.END), request["op"])
    finally:
        stream.close()


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"malformed process list from the agent: {what}")
    return value


async def list_processes(conn: AgentConnection) -> list[ProcInfo]:
    body = await _unary(conn, {"op": "proc_list"})
    raw = body.get("processes")
    if not isinstance(raw, list) or len(raw) > limits.AGENT_PROC_LIST_MAX:
        raise ProtocolError("malformed process list from the agent")
    procs = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("malformed process list from the agent")
        env = item.get("env") or {}
        tag, cwd = item.get("tag"), item.get("cwd")
        if (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            or not isinstance(tag, str | None)
            or not isinstance(cwd, str | None)
        ):
            raise ProtocolError("malformed process list from the agent")
        pid = guest_int(item, "pid", 1, 2**31 - 1, "process list")
        assert pid is not None
        procs.append(
            ProcInfo(
                pid=pid,
                tag=tag,
                argv=_str_list(item.get("argv"), "argv"),
                env=env,
                cwd=cwd,
                pty=item.get("pty") is True,
            )
        )
    return procs


async def send_input(
    conn: AgentConnection, selector: Selector, data: bytes | AsyncIterator[bytes], *, close: bool = False
) -> None:
    """Write ``data`` (bytes, or chunks in order) to the process's stdin (a PTY's input), then close
    stdin if ``close``. Returns once the agent has written it all."""
    stream = conn.open_stream({"op": "proc_input", "close_stdin": close, **selector.request()})
    try:
        if isinstance(data, bytes):
            if data:
                await stream.send_data(data, Pipe.STDIN)
        else:
            async for chunk in data:
                if chunk:
                    await stream.send_data(chunk, Pipe.STDIN)
        await stream.send_eof(Pipe.STDIN)
        async with asyncio.timeout(limits.AGENT_PROC_CALL_TIMEOUT):
            await stream.recv_until(FrameType.END)
    finally:
        stream.close()


async def close_stdin(conn: AgentConnection, selector: Selector) -> None:
    await send_input(conn, selector, b"", close=True)


async def send_signal(conn: AgentConnection, selector: Selector, signo: int) -> None:
    """Send ``signo`` to the process's group."""
    await _unary(conn, {"op": "proc_signal", "signal": signo, **selector.request()})


async def resize(conn: AgentConnection, selector: Selector, rows: int, cols: int) -> None:
    await _unary(conn, {"op": "proc_resize", "rows": rows, "cols": cols, **selector.request()})
