"""The ``put`` and ``get`` operations: stream one file in or out, never holding it in memory.

put: request {path, mode, mkdirs}; the body arrives as DATA on STDIN then EOF; it is written to a
temporary file in the target directory, fsync'd, given its mode and renamed over the target, so readers
see the old file or the whole new one. END {size, path}. Any failure removes the temporary file.
With ``user`` (see ``accounts``) the path may be relative to the user's home, and the file and the
directories ``mkdirs`` creates belong to the user. With ``inplace`` the file is written where it is
instead (opened with O_TRUNC, as E2B's envd writes, so watchers see the write events of the file
itself; the mode applies only to a file that did not exist): a failure can leave it partly written.

get: request {path, user}; INFO {size, mode}, DATA on STDOUT (within the host's window), EOF, END {size}.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import TYPE_CHECKING, Any

from . import metadata as file_metadata
from .accounts import ensure_dirs, request_account, request_path
from .protocol import MAX_PAYLOAD, ErrorCode, FrameType, Pipe, encode_json
from .session import Session, SessionError, opt_bool, opt_int, os_error

if TYPE_CHECKING:
    import asyncio

    from .connection import Connection

# Chunks sent per event-loop turn, so one download cannot starve the other sessions.
_CHUNKS_PER_TURN = 16


class PutSession(Session):
    op = "put"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.account = request_account(req)
        self.path = request_path(req, self.account)
        self.mode = opt_int(req, "mode", 0o644, 0, 0o7777)
        self.mkdirs = opt_bool(req, "mkdirs", False)
        self.inplace = opt_bool(req, "inplace", False)
        # E2B uploads always carry the file's whole metadata set (possibly empty: clear it); others none.
        self.metadata = file_metadata.validate(req["metadata"]) if req.get("metadata") is not None else None
        self.size = 0
        self._fd: int | None = None
        self._tmp: str | None = None

    def start(self) -> None:
        parent, name = os.path.split(self.path)
        if not name:
            raise SessionError(ErrorCode.BAD_REQUEST, f"{self.path} names a directory, not a file")
        try:
            if self.mkdirs:
                ensure_dirs(parent or "/", self.account)
            if os.path.isdir(self.path):
                raise SessionError(ErrorCode.IO_ERROR, f"path is a directory: {self.path}", "EISDIR")
            if self.inplace:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.mode)
            else:
                self._fd, self._tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".clawpot-part")
            if self.account is not None:
                os.fchown(self._fd, self.account.uid, self.account.gid)
        except OSError as exc:
            raise os_error("create", self.path, exc) from None

    def on_data(self, pipe: int, data: bytes) -> None:
        if pipe != Pipe.STDIN or self._fd is None:
            raise SessionError(ErrorCode.BAD_REQUEST, "put sessions take DATA on stdin only")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise os_error("write", self.path, exc) from None
        self.size += len(data)
        self.grant(len(data))

    def on_eof(self, pipe: int) -> None:
        if pipe != Pipe.STDIN or self._fd is None or (self._tmp is None and not self.inplace):
            raise SessionError(ErrorCode.BAD_REQUEST, "put sessions take EOF on stdin only")
        fd, self._fd = self._fd, None
        if self.metadata is not None:
            try:
                file_metadata.write(fd, self.metadata)
            except OSError as exc:
                os.close(fd)
                raise os_error("write metadata of", self.path, exc) from None
        if self._tmp is None:  # in place: the file is already where it belongs
            try:
                os.close(fd)
            except OSError as exc:
                raise os_error("write", self.path, exc) from None
            self.finish(self._result())
            return
        try:
            try:
                os.fchmod(fd, self.mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise os_error("write", self.path, exc) from None
        self._tmp = None
        self._sync_dir()
        self.finish(self._result())

    def _result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"size": self.size, "path": self.path}
        if self.metadata is not None:
            result["metadata"] = file_metadata.read(self.path)  # what persisted, as envd reports it
        return result

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
        self.path = request_path(req, request_account(req))
        self.sent = 0
        self._fd: int | None = None
        self._scheduled: asyncio.Handle | None = None

    def start(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(self._fd)
        except OSError as exc:
            raise os_error("open", self.path, exc) from None
        if stat.S_ISDIR(st.st_mode):
            raise SessionError(ErrorCode.BAD_REQUEST, f"{self.path} is a directory", "EISDIR")
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
