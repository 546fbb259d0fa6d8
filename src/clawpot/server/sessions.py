"""What the servicer holds while a guest operation runs: a command's session, a download's stream.

They wrap the agent client's objects and turn its errors into ``ServerError``s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from clawpot.guest import Download, ExecProcess, ExitStatus, GuestError, Output
from clawpot.server import errors


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
    """One running command, as the servicer sees it: output events, then ``result()``."""

    def __init__(self, process: ExecProcess) -> None:
        self._process = process
        self._status: ExitStatus | None = None

    async def events(self) -> AsyncIterator[OutputChunk]:
        try:
            async for event in self._process:
                if isinstance(event, Output):
                    if event.stream == "stdout":
                        yield OutputChunk(stdout=event.data)
                    else:
                        yield OutputChunk(stderr=event.data)
                else:
                    self._status = event.status
        except GuestError as exc:
            raise errors.Unavailable(f"lost the guest agent during exec: {exc}") from exc

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
                async for chunk in download:
                    received += len(chunk)
                    if received > max_size:
                        raise errors.FailedPrecondition(_too_big(max_size, "the guest sent more"))
                    yield chunk
        except GuestError as exc:
            raise errors.Unavailable(f"lost the guest agent during download: {exc}") from exc


def _too_big(max_size: int, detail: str) -> str:
    return f"file larger than max_size ({max_size} bytes): {detail}; raise max_size (clawpot cp --max-size)"
