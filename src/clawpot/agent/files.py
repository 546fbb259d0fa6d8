"""The ``put`` and ``get`` operations: stream one file in or out, never holding it in memory.

put: request {path, mode, mkdirs}; the body arrives as DATA on STDIN then EOF; it is written to a
temporary file in the target directory, fsync'd, given its mode and renamed over the target, so readers
see the old file or the whole new one. END {size}. Any failure removes the temporary file.

get: request {path}; INFO {size, mode}, DATA on STDOUT (within the host's window), EOF, END {size}.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import TYPE_CHECKING, Any

from .protocol import MAX_PAYLOAD, ErrorCode, FrameType, Pipe, encode_json
from .session import Session, SessionError, abs_path, opt_bool, opt_int

if TYPE_CHECKING:
    import asyncio

    from .connection import Connection

# Chunks sent per event-loop turn, so one download cannot starve the other sessions.
_CHUNKS_PER_TURN = 16


def _io_error(action: str, path: str, exc: OSError) -> SessionError:
    return SessionError(ErrorCode.IO_ERROR, f"cannot {action} {path}: {exc.strerror or exc}")


class PutSession(Session):
    op = "put"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.path = abs_path(req)
        self.mode = opt_int(req, "mode", 0o644, 0, 0o7777)
        self.mkdirs = opt_bool(req, "mkdirs", False)
        self.size = 0
        self._fd: int | None = None
        self._tmp: str | None = None

    def start(self) -> None:
        parent, name = os.path.split(self.path)
        if not name:
            raise SessionError(ErrorCode.BAD_REQUEST, f"{self.path} names a directory, not a file")
        try:
            if self.mkdirs:
                os.makedirs(parent, exist_ok=True)
            if os.path.isdir(self.path):
                raise IsADirectoryError(21, "Is a directory")
            self._fd, self._tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".clawpot-part")
        except OSError as exc:
            raise _io_error("create", self.path, exc) from None

    def on_data(self, pipe: int, data: bytes) -> None:
        if pipe != Pipe.STDIN or self._fd is None:
            raise SessionError(ErrorCode.BAD_REQUEST, "put sessions take DATA on stdin only")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise _io_error("write", self.path, exc) from None
        self.size += len(data)
        self.grant(len(data))

    def on_eof(self, pipe: int) -> None:
        if pipe != Pipe.STDIN or self._fd is None or self._tmp is None:
            raise SessionError(ErrorCode.BAD_REQUEST, "put sessions take EOF on stdin only")
        fd, self._fd = self._fd, None
        try:
            try:
                os.fchmod(fd, self.mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise _io_error("write", self.path, exc) from None
        self._tmp = None
        self._sync_dir()
        self.finish({"size": self.size, "path": self.path})

    def _sync_dir(self) -> None:
        # Makes the rename itself durable; best effort (some filesystems refuse fsync on directories).
        with contextlib.suppress(OSError):
            dfd = os.open(os.path.dirname(self.path) or "/", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def cleanup(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


class GetSession(Session):
    op = "get"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.path = abs_path(req)
        self.sent = 0
        self._fd: int | None = None
        self._scheduled: asyncio.Handle | None = None

    def start(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(self._fd)
        except OSError as exc:
            raise _io_error("open", self.path, exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise SessionError(ErrorCode.BAD_REQUEST, f"{self.path} is not a regular file")
        self.send(FrameType.INFO, encode_json({"size": st.st_size, "mode": stat.S_IMODE(st.st_mode)}))
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled is None and not self.done:
            self._scheduled = self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = None
        for _ in range(_CHUNKS_PER_TURN):
            if self.done or self._fd is None or self.send_window <= 0 or self.conn.writing_paused:
                return  # on_window / on_writable reschedule
            try:
                data = os.read(self._fd, min(MAX_PAYLOAD, self.send_window))
            except OSError as exc:
                self.fail(ErrorCode.IO_ERROR, f"cannot read {self.path}: {exc.strerror or exc}")
                return
            if not data:
                self.send(FrameType.EOF, flags=Pipe.STDOUT)
                self.finish({"size": self.sent, "path": self.path})
                return
            self.sent += len(data)
            self.send_window -= len(data)
            self.send(FrameType.DATA, data, Pipe.STDOUT)
        self._schedule()

    def on_window(self) -> None:
        self._schedule()

    def on_writable(self) -> None:
        self._schedule()

    def cleanup(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
