"""What the servicer holds while a guest operation runs: a command's session, a download's stream.

They wrap the agent client's objects and turn its errors into ``ServerError``s. Time is the host's:
an exec with a timeout ends by its deadline whatever the guest does, and a transfer whose agent side
stops moving for ``stall_timeout`` fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from clawpot import errors
from clawpot.agent_client import Download, ExecProcess, ExitStatus, GuestError, Output


@dataclass(frozen=True)
class ExecParams:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    tty: bool = False
    rows: int = 0
    cols: int = 0
    stdin: bool = False


@dataclass(frozen=True)
class OutputChunk:
    stdout: bytes | None = None
    stderr: bytes | None = None


class ExecSession:
    """One running command, as the servicer sees it: output events, then ``result()``.

    ``deadline`` (event-loop time): past it the host gives up on the command whatever the guest does,
    asks the agent to kill its process group (CANCEL, without waiting for an answer) and raises
    DeadlineExceeded. ``on_lost`` hears about a connection lost mid-stream (the node's agent health).
    """

    def __init__(
        self,
        process: ExecProcess,
        *,
        deadline: float | None = None,
        timeout: float | None = None,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._process = process
        self._status: ExitStatus | None = None
        self._deadline = deadline
        self._timeout = timeout
        self._on_lost = on_lost

    async def events(self) -> AsyncIterator[OutputChunk]:
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline):
                        event = await anext(self._process, None)
                except TimeoutError:
                    self._give_up()
                    raise errors.DeadlineExceeded(
                        f"command timed out after {self._timeout or 0:g}s and the guest did not end it: "
                        "the host stopped waiting and asked the agent to kill its process group"
                    ) from None
                if event is None:
                    return
                if isinstance(event, Output):
                    if event.stream == "stdout":
                        yield OutputChunk(stdout=event.data)
                    else:
                        yield OutputChunk(stderr=event.data)
                else:
                    self._status = event.status
        except GuestError as exc:
            if self._on_lost is not None:
                self._on_lost(exc)
            raise errors.Unavailable(f"lost the guest agent during exec: {_first_line(exc)}") from exc

    def _give_up(self) -> None:
        # Best effort and non-blocking: CANCEL is queued on the connection; a wedged guest may never
        # read it, and nothing here waits for it to.
        with contextlib.suppress(GuestError):
            self._process.cancel()

    async def result(self) -> ExitStatus:
        if self._status is None:
            raise errors.Unavailable("the command ended without an exit status")
        if self._status.timed_out:
            raise errors.DeadlineExceeded(
                f"command timed out after {self._status.duration:.1f}s; its process group was killed"
            )
        return self._status

    async def write_stdin(self, data: bytes) -> None:
        await self._process.write(data)

    async def close_stdin(self) -> None:
        await self._process.close_stdin()

    async def send_signal(self, signo: int) -> None:
        await self._process.signal(signo)

    async def resize(self, rows: int, cols: int) -> None:
        await self._process.resize(rows, cols)

    async def close(self) -> None:
        if self._process.status is None:
            with contextlib.suppress(GuestError):
                self._process.cancel()


@dataclass(frozen=True)
class DownloadHandle:
    """A guest file being read. ``size`` and ``mode`` are what the guest says: untrusted."""

    size: int
    mode: int
    _download: Download
    # Longest wait for the agent's next chunk (time the client takes to read does not count).
    stall_timeout: float | None = None

    async def chunks(self, max_size: int) -> AsyncIterator[bytes]:
        """The file's bytes. FAILED_PRECONDITION rather than byte ``max_size + 1``: at once when the guest
        says the file is bigger (its word only saves the wait), else when that many really arrived."""
        download = self._download
        received = 0
        try:
            async with download:
                if self.size > max_size:
                    raise errors.FailedPrecondition(
                        _too_big(max_size, f"the guest reports {self.size} bytes")
                    )
                while True:
                    try:
                        async with asyncio.timeout(self.stall_timeout):
                            chunk = await anext(download, None)
                    except TimeoutError:
                        raise errors.Unavailable(
                            f"the guest agent sent nothing for {self.stall_timeout:g}s during the download"
                        ) from None
                    if chunk is None:
                        return
                    received += len(chunk)
                    if received > max_size:
                        raise errors.FailedPrecondition(_too_big(max_size, "the guest sent more"))
                    yield chunk
        except GuestError as exc:
            raise errors.Unavailable(f"lost the guest agent during download: {_first_line(exc)}") from exc


async def upload_watched(
    put: Callable[[AsyncIterator[bytes]], Awaitable[int]], chunks: AsyncIterator[bytes], stall: float
) -> int:
    """Run ``put(relayed chunks)``; TimeoutError if the agent side makes no progress for ``stall``
    seconds. Only time spent waiting on the agent counts, never time spent waiting for the client."""
    loop = asyncio.get_running_loop()
    agent_since: float | None = loop.time()  # None while we wait for the client's next chunk

    async def relay() -> AsyncIterator[bytes]:
        nonlocal agent_since
        while True:
            agent_since = None
            chunk = await anext(chunks, None)
            agent_since = loop.time()
            if chunk is None:
                return  # then the agent commits the file: still the agent's time
            yield chunk

    task = asyncio.ensure_future(put(relay()))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=stall / 4)
            if done:
                return task.result()
            if agent_since is not None and loop.time() - agent_since > stall:
                raise TimeoutError
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _too_big(max_size: int, detail: str) -> str:
    return f"file larger than max_size ({max_size} bytes): {detail}; raise max_size (clawpot cp --max-size)"
