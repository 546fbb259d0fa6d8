"""File transfer to and from the guest, streamed in chunks: neither side ever holds a whole file.

Local disk I/O runs in worker threads so a slow disk never stalls the event loop (and with it every
other session on the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from clawpot import limits
from clawpot.agent.protocol import MAX_PAYLOAD, FrameType, Pipe
from clawpot.agent_client import fs
from clawpot.agent_client.connection import AgentConnection, Stream, guest_int, guest_json
from clawpot.agent_client.errors import FileTooLarge, GuestError, ProtocolError

_LOCAL_CHUNK = 4 * MAX_PAYLOAD
# Bits a downloaded file never gets, whatever the guest says: setuid, setgid, sticky, world-writable.
_UNSAFE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH
_DEFAULT_MODE = 0o644


def safe_mode(guest_mode: int, umask: int) -> int:
    """The mode a file copied out of a guest gets: the guest's permission bits without setuid, setgid,
    sticky and world-write, then the umask (0644 when the guest gives none)."""
    mode = (guest_mode & 0o7777) or _DEFAULT_MODE
    return mode & ~_UNSAFE_BITS & ~umask & 0o777


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


Source = Path | bytes | AsyncIterable[bytes]


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    mode: int
    metadata: dict[str, str] | None = None  # after an upload with metadata: what the file keeps


async def _read_local(path: Path) -> AsyncIterator[bytes]:
    f: BinaryIO = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _LOCAL_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def _from_bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_file(
    conn: AgentConnection,
    source: Source,
    remote: str,
    *,
    mode: int | None = None,
    mkdirs: bool = False,
    user: str | None = None,
    inplace: bool = False,
    metadata: dict[str, str] | None = None,
) -> RemoteFile:
    """Upload ``source`` to the guest path ``remote`` (atomically replaced, or written in place with
    ``inplace``); returns the path the agent wrote (``remote`` resolved from ``user``'s home when
    relative) and the size. ``user`` owns the file and the directories ``mkdirs`` creates."""
    chunks: AsyncIterable[bytes]
    if isinstance(source, Path):
        if mode is None:
            mode = (await asyncio.to_thread(source.stat)).st_mode & 0o7777
        chunks = _read_local(source)
    elif isinstance(source, bytes | bytearray | memoryview):
        chunks = _from_bytes(bytes(source))
    else:
        chunks = source
    request: dict[str, Any] = {"op": "put", "path": remote, "mode": 0o644 if mode is None else mode}
    request["mkdirs"] = mkdirs
    if user:
        request["user"] = user
    if inplace:
        request["inplace"] = True
    if metadata is not None:
        request["metadata"] = metadata  # the file's whole set: {} clears what it had
    stream = conn.open_stream(request)
    try:
        try:
            async for chunk in chunks:
                await stream.send_data(chunk, Pipe.STDIN)
            await stream.send_eof(Pipe.STDIN)
        except GuestError:
            if stream.final is None:  # not ended by the agent: the real error is ours
                raise
        result = guest_json(await stream.recv_until(FrameType.END), "put result")
        size = guest_int(result, "size", 0, 2**63, "put result")
        if size is None:
            raise ProtocolError("malformed put result from the agent: no size")
        path = result.get("path", remote)
        kept = fs.guest_metadata(result.get("metadata"))
        return RemoteFile(fs.guest_text(path, "put result path"), size, mode or 0, kept)
    finally:
        stream.close()


class Download:
    """A guest file being read: ``async for chunk in download``; use as an async context manager."""

    def __init__(self, stream: Stream, info: RemoteFile) -> None:
        self._stream = stream
        self.info = info
        self.received = 0
        self.complete = False

    def __aiter__(self) -> Download:
        return self

    async def __anext__(self) -> bytes:
        if self.complete:
            raise StopAsyncIteration
        frame = await self._stream.recv_until(FrameType.DATA, FrameType.END)
        if frame.type == FrameType.END:
            self.complete = True
            self._stream.close()
            if self.received != self.info.size:
                # The file changed while we read it; what we got is still a consistent byte stream.
                self.info = RemoteFile(self.info.path, self.received, self.info.mode)
            raise StopAsyncIteration
        self.received += len(frame.payload)
        self._stream.consumed(len(frame.payload))
        return frame.payload

    async def __aenter__(self) -> Download:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(GuestError):
            self._stream.close()


async def open_download(conn: AgentConnection, remote: str, *, user: str | None = None) -> Download:
    """Start reading ``remote`` (relative paths from ``user``'s home)."""
    request: dict[str, Any] = {"op": "get", "path": remote}
    if user:
        request["user"] = user
    stream = conn.open_stream(request)
    try:
        info = guest_json(await stream.recv_until(FrameType.INFO), "file info")
        size = guest_int(info, "size", 0, 2**63, "file info")
        mode = guest_int(info, "mode", 0, 0o177777, "file info")
        if size is None or mode is None:
            raise ProtocolError("malformed file info from the agent: no size or mode")
    except BaseException:
        stream.close()
        raise
    return Download(stream, RemoteFile(remote, size, mode))


async def get_file(
    conn: AgentConnection, remote: str, local: Path, max_size: int = limits.DOWNLOAD_MAX_BYTES
) -> RemoteFile:
    """Download ``remote`` to ``local``: written to a temporary file, renamed into place when complete,
    with the guest's mode made safe (``safe_mode``). The guest's word is untrusted: more than
    ``max_size`` bytes (claimed or received) is ``FileTooLarge`` and leaves no file."""
    tmp = local.with_name(f".{local.name}.{secrets.token_hex(4)}.part")
    async with await open_download(conn, remote) as download:
        if download.info.size > max_size:
            raise FileTooLarge(f"{remote}: the guest reports {download.info.size} bytes, over {max_size}")
        f: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
        try:
            try:
                async for chunk in download:
                    if download.received > max_size:
                        raise FileTooLarge(f"{remote}: the guest sent more than {max_size} bytes")
                    await asyncio.to_thread(f.write, chunk)
            finally:
                await asyncio.to_thread(f.close)
            await asyncio.to_thread(os.chmod, tmp, safe_mode(download.info.mode, current_umask()))
            await asyncio.to_thread(os.replace, tmp, local)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return download.info
