"""One session (stream) of a connection: the base class every operation builds on.

A session ends exactly once, with END (success), ERROR (failure) or silently when its connection is lost;
``cleanup`` releases what it holds (processes, descriptors, temporary files) in every case.
"""

from __future__ import annotations

import asyncio
import errno as errno_module
from typing import TYPE_CHECKING, Any

from .protocol import (
    DEFAULT_WINDOW,
    MAX_PAYLOAD,
    MAX_WINDOW,
    RESIZE_PAYLOAD,
    SIGNAL_PAYLOAD,
    WINDOW_PAYLOAD,
    ErrorCode,
    Frame,
    FrameType,
    encode_frame,
    encode_json,
    error_payload,
)

if TYPE_CHECKING:
    from .connection import Connection


class SessionError(Exception):
    """Ends a session with an ERROR frame carrying ``code``, the message and, for an OS error, its
    symbolic ``errno`` name."""

    def __init__(self, code: ErrorCode, message: str, errno: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errno = errno


def os_error(action: str, path: str, exc: OSError) -> SessionError:
    """``io_error`` for a failed OS call on ``path``, naming the errno (``ENOENT``...)."""
    name = errno_module.errorcode.get(exc.errno or 0)
    return SessionError(ErrorCode.IO_ERROR, f"cannot {action} {path}: {exc.strerror or exc}", name)


class Session:
    op = "?"

    def __init__(self, conn: Connection, stream_id: int, request: dict[str, Any]) -> None:
        self.conn = conn
        self.id = stream_id
        self.done = False
        # Credit for DATA we send (granted by the host) and for DATA we accept (granted by us).
        self.send_window = opt_int(request, "window", DEFAULT_WINDOW, 1, MAX_WINDOW)
        self.recv_window = DEFAULT_WINDOW
        self._grant_pending = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.conn.ctx.loop

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release everything the session holds. Called once, however the session ends."""

    def finish(self, result: dict[str, Any]) -> None:
        if self.done:
            return
        self.done = True
        self.cleanup()
        self.send(FrameType.END, encode_json(result))
        self.conn.session_done(self)

    def fail(self, code: ErrorCode, message: str, errno: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.cleanup()
        self.send(FrameType.ERROR, error_payload(code, message, errno=errno))
        self.conn.session_done(self)

    def abort(self) -> None:
        """The connection is gone: clean up without sending anything."""
        if not self.done:
            self.done = True
            self.cleanup()

    # --- frames ----------------------------------------------------------------------------------------

    def send(self, ftype: FrameType, payload: bytes = b"", flags: int = 0) -> None:
        self.conn.send(ftype, self.id, payload, flags)

    def send_data(self, data: bytes, pipe: int) -> None:
        """DATA frames for ``data`` (split at MAX_PAYLOAD), handed to the link in one write."""
        if len(data) <= MAX_PAYLOAD:
            self.send(FrameType.DATA, data, pipe)
            return
        view = memoryview(data)
        frames = [
            encode_frame(FrameType.DATA, self.id, bytes(view[i : i + MAX_PAYLOAD]), pipe)
            for i in range(0, len(data), MAX_PAYLOAD)
        ]
        self.conn.send_raw(b"".join(frames))

    def send_from(self, fd: int, pipe: int, limit: int) -> int:
        """Read up to ``limit`` bytes of ``fd`` (one read) and send them as DATA frames on ``pipe``.

        Returns how many bytes went out, 0 at end of file; raises what ``os.read`` raises."""
        count, frames = self.conn.ctx.out_frames.read(fd, self.id, pipe, limit)
        if frames is not None:
            with frames:
                self.conn.send_view(frames)
        return count

    def grant(self, consumed: int, *, flush: bool = False) -> None:
        """Give the host back credit for ``consumed`` bytes, batched into few WINDOW frames."""
        self._grant_pending += consumed
        if self._grant_pending and (flush or self._grant_pending >= DEFAULT_WINDOW // 4):
            self.recv_window += self._grant_pending
            self.send(FrameType.WINDOW, WINDOW_PAYLOAD.pack(self._grant_pending))
            self._grant_pending = 0

    def handle(self, frame: Frame) -> None:
        ftype, payload = frame.type, frame.payload
        if ftype == FrameType.DATA:
            if len(payload) > self.recv_window:
                raise SessionError(
                    ErrorCode.WINDOW_EXCEEDED,
                    f"DATA of {len(payload)} bytes exceeds the remaining window of {self.recv_window}",
                )
            self.recv_window -= len(payload)
            self.on_data(frame.flags, payload)
        elif ftype == FrameType.EOF:
            self.on_eof(frame.flags)
        elif ftype == FrameType.WINDOW:
            (increment,) = unpack(WINDOW_PAYLOAD, payload, "WINDOW")
            if self.send_window + increment > MAX_WINDOW:
                raise SessionError(ErrorCode.BAD_REQUEST, "WINDOW grows the window beyond its maximum")
            self.send_window += increment
            self.on_window()
        elif ftype == FrameType.SIGNAL:
            signo, group = unpack(SIGNAL_PAYLOAD, payload, "SIGNAL")
            self.on_signal(signo, bool(group))
        elif ftype == FrameType.RESIZE:
            rows, cols = unpack(RESIZE_PAYLOAD, payload, "RESIZE")
            self.on_resize(rows, cols)
        elif ftype == FrameType.CANCEL:
            self.on_cancel()
        else:  # the connection only routes the types above here
            raise SessionError(ErrorCode.UNEXPECTED_FRAME, f"frame type 0x{ftype:02x} not valid on a stream")

    def on_data(self, pipe: int, data: bytes) -> None:
        raise SessionError(ErrorCode.UNEXPECTED_FRAME, f"{self.op} sessions take no DATA")

    def on_eof(self, pipe: int) -> None:
        raise SessionError(ErrorCode.UNEXPECTED_FRAME, f"{self.op} sessions take no EOF")

    def on_window(self) -> None:
        pass

    def on_signal(self, signo: int, group: bool) -> None:
        raise SessionError(ErrorCode.UNEXPECTED_FRAME, f"{self.op} sessions take no SIGNAL")

    def on_resize(self, rows: int, cols: int) -> None:
        raise SessionError(ErrorCode.UNEXPECTED_FRAME, f"{self.op} sessions take no RESIZE")

    def on_cancel(self) -> None:
        self.fail(ErrorCode.CANCELLED, "cancelled by the host")

    def on_writable(self) -> None:
        """The connection accepts output again after having been paused."""


# --- request validation helpers ------------------------------------------------------------------------


def unpack(fmt: Any, payload: bytes, what: str) -> tuple[int, ...]:
    if len(payload) != fmt.size:
        raise SessionError(ErrorCode.BAD_REQUEST, f"{what} payload must be {fmt.size} bytes")
    return tuple(fmt.unpack(payload))


def opt_int(req: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = req.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} must be an integer in [{lo}, {hi}]")
    return value


def opt_bool(req: dict[str, Any], key: str, default: bool) -> bool:
    value = req.get(key, default)
    if not isinstance(value, bool):
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} must be true or false")
    return value


def opt_str(req: dict[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} must be a string without NUL bytes")
    return value


def abs_path(req: dict[str, Any], key: str = "path") -> str:
    value = opt_str(req, key)
    if not value or not value.startswith("/"):
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} must be an absolute path")
    return value
