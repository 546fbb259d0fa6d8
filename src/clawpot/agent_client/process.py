"""A process started through the agent, seen from the host: a stream of output events and controls.

``async for event in proc`` yields ``Output`` chunks as the agent produces them and ends with one
``Exited``. Credit goes back to the agent only as events are taken, so a slow consumer slows the remote
process down instead of filling memory.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from clawpot.agent.protocol import Frame, FrameType, Pipe
from clawpot.agent_client.connection import Stream, guest_int, guest_json
from clawpot.agent_client.errors import AgentDisconnected, ProtocolError


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: ``exit_code`` when it exited, ``signal`` when a signal killed it."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class Output:
    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exited:
    status: ExitStatus


ExecEvent = Output | Exited


@dataclass(frozen=True)
class ExecResult:
    status: ExitStatus
    stdout: bytes
    stderr: bytes

    @property
    def exit_code(self) -> int | None:
        return self.status.exit_code

    @property
    def ok(self) -> bool:
        return self.status.ok


def _exit_status(frame: Frame) -> ExitStatus:
    # Guest-supplied: every field is checked, so a lying agent gets a ProtocolError, not a crash above.
    what = "exec result"
    body = guest_json(frame, what)
    duration = body.get("duration", 0.0)
    if not isinstance(duration, int | float) or isinstance(duration, bool) or not 0 <= duration < 1e9:
        raise ProtocolError(f"malformed {what} from the agent: duration")
    return ExitStatus(
        exit_code=guest_int(body, "exit_code", -(2**31), 2**31 - 1, what),
        signal=guest_int(body, "signal", 0, 255, what),
        timed_out=body.get("timed_out", False) is True,
        duration=float(duration),
    )


class ExecProcess:
    def __init__(self, stream: Stream, pid: int | None, pty: bool) -> None:
        self._stream = stream
        self.pid = pid
        self.pty = pty
        self.status: ExitStatus | None = None

    # --- output ----------------------------------------------------------------------------------------

    def __aiter__(self) -> ExecProcess:
        return self

    async def __anext__(self) -> ExecEvent:
        if self.status is not None:
            raise StopAsyncIteration
        while True:
            frame = await self._stream.recv_until(FrameType.DATA, FrameType.END)
            if frame.type == FrameType.END:
                self.status = _exit_status(frame)
                self._stream.close()
                return Exited(self.status)
            self._stream.consumed(len(frame.payload))
            return Output("stderr" if frame.flags == Pipe.STDERR else "stdout", frame.payload)

    async def wait(self) -> ExitStatus:
        """Wait for the exit, discarding any output not consumed yet."""
        async for _ in self:
            pass
        assert self.status is not None
        return self.status

    # --- input and control -----------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data`` to stdin (waits while the agent has no room for it)."""
        await self._stream.send_data(data, Pipe.STDIN)

    async def close_stdin(self) -> None:
        """EOF on stdin (with a PTY: the terminal's EOF character)."""
        await self._stream.send_eof(Pipe.STDIN)

    async def signal(self, signo: int, *, group: bool = True) -> None:
        """Send ``signo`` to the process group (``group=False``: to the process only)."""
        await self._stream.send_signal(signo, group)

    async def kill(self) -> None:
        await self.signal(_signal.SIGKILL)

    async def resize(self, rows: int, cols: int) -> None:
        await self._stream.send_resize(rows, cols)

    def cancel(self) -> None:
        """Stop caring: the agent kills the process group; no result will come."""
        self._stream.close()

    async def __aenter__(self) -> ExecProcess:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.status is None:
            try:
                self.cancel()
            except AgentDisconnected:
                pass
