"""One host session on a link: the handshake, frame parsing, and routing frames to sessions.

A socket link carries exactly one Connection. A serial link carries one after another: every
``CLAWPOT-HELLO`` the host sends (after a reconnect) starts a fresh Connection and ends the old one,
whose processes are killed like those of a caller that disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .outframes import READ_FRAMES, OutFrames
from .protocol import (
    DEFAULT_WINDOW,
    HELLO,
    MAX_LINE,
    MAX_PAYLOAD,
    MAX_SESSIONS,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Hello,
    decode_json,
    encode_frame,
    error_payload,
    negotiate,
    parse_hello,
    reject_line,
    welcome_line,
)
from .reaper import Reaper
from .session import Session, SessionError

if TYPE_CHECKING:
    from .configure import Machine

log = logging.getLogger(__name__)

_STREAM_FRAMES = frozenset(
    {FrameType.DATA, FrameType.EOF, FrameType.WINDOW, FrameType.SIGNAL, FrameType.RESIZE, FrameType.CANCEL}
)
_AGENT_ONLY_FRAMES = frozenset({FrameType.PONG, FrameType.END, FrameType.INFO})


@dataclass
class AgentContext:
    """What every connection and session shares."""

    loop: asyncio.AbstractEventLoop
    reaper: Reaper
    guest: bool
    request_shutdown: Callable[[str], None]
    ops: dict[str, Callable[[Connection, int, dict[str, Any]], Session]]
    # The one buffer every session reads its output into (outframes.py): 256 KiB per read, as before.
    out_frames: OutFrames = field(default_factory=lambda: OutFrames(READ_FRAMES))
    # What ``configure`` changes; None: configure is refused (an agent run on a host must never rename
    # it). Set by main: the guest itself, or a sandbox's namespaces (tests).
    configure_target: Machine | None = None
    # The managed processes (processes.ProcessTable, created on first use): they outlive connections.
    processes: Any = None


class Link(Protocol):
    """The byte stream a Connection talks over (a socket or the serial port)."""

    name: str
    resync: bool  # True: stale bytes may precede a HELLO and a new HELLO may arrive at any time

    @property
    def writing_paused(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def write_view(self, data: memoryview) -> None:
        """Write ``data``, which the caller reuses once this returns: send it now or copy it."""

    def end_session(self, rest: bytes) -> None:
        """The Connection is over. Sockets close (after flushing); serial rescans ``rest`` for a HELLO."""


class Connection:
    def __init__(self, ctx: AgentContext, link: Link) -> None:
        self.ctx = ctx
        self.link = link
        self.closed = False
        self.pristine = True  # nothing received yet
        self.sessions: dict[int, Session] = {}
        self._handshaken = False
        self._scan = bytearray()
        self._decoder = FrameDecoder()
        self._highest_stream = 0

    # --- link -> connection ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.pristine = False
        if not self._handshaken:
            self._scan += data
            rest = self._handshake()
            if rest is None:
                return
            data = rest
        self._decoder.feed(data)
        while not self.closed:
            try:
                frame = self._decoder.next()
            except FrameError as exc:
                self._fatal(exc.code, str(exc))
                return
            if frame is None:
                return
            try:
                self._dispatch(frame)
            except Exception as exc:  # a bug must not take the agent down: report it and carry on
                log.exception("%s: internal error handling frame type 0x%02x", self.link.name, frame.type)
                self.send_error(0, ErrorCode.INTERNAL, f"internal error: {exc!r}")

    def writable(self) -> None:
        for session in list(self.sessions.values()):
            session.on_writable()

    def lost(self, reason: str) -> None:
        """The host is gone (or a new host session replaces this one): kill everything it started."""
        if self.closed:
            return
        self.closed = True
        if self.sessions:
            log.info("%s: %s; ending %d session(s)", self.link.name, reason, len(self.sessions))
        for session in list(self.sessions.values()):
            session.abort()
        self.sessions.clear()

    # --- sending ---------------------------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self.link.writing_paused

    def send(self, ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        if not self.closed:
            self.link.write(encode_frame(ftype, stream, payload, flags))

    def send_raw(self, frames: bytes) -> None:
        """Already encoded frames."""
        if not self.closed:
            self.link.write(frames)

    def send_view(self, frames: memoryview) -> None:
        """Already encoded frames in a buffer the caller reuses (sent or copied before this returns)."""
        if not self.closed:
            self.link.write_view(frames)

    def send_error(
        self,
        stream: int,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        level: int = logging.WARNING,
        errno: str | None = None,
    ) -> None:
        log.log(level, "%s: stream %d: %s: %s", self.link.name, stream, code, message)
        self.send(FrameType.ERROR, stream, error_payload(code, message, fatal=fatal, errno=errno))

    def session_done(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    # --- handshake -------------------------------------------------------------------------------------

    def _handshake(self) -> bytes | None:
        """Consume the HELLO line from ``self._scan``; returns the bytes after it once accepted."""
        while True:
            found = self._next_hello()
            if found is None:
                return None
            hello, rest = found
            version = negotiate(hello)
            if version is not None:
                break
            self._reject(
                hello.nonce,
                f"no common protocol version (host speaks {hello.min_version}-{hello.max_version})",
            )
            if self.closed:
                return None
        self._handshaken = True
        self._scan = bytearray()
        info = {
            "agent": "clawpot-agent",
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "guest": self.ctx.guest,
            "max_payload": MAX_PAYLOAD,
            "window": DEFAULT_WINDOW,
            "max_sessions": MAX_SESSIONS,
        }
        self.link.write(welcome_line(hello.nonce, version, info))
        log.info("%s: host session started (protocol %d)", self.link.name, version)
        return rest

    def _next_hello(self) -> tuple[Hello, bytes] | None:
        buf = self._scan
        if not self.link.resync:
            # A socket carries one host session: the first bytes must be the HELLO line.
            head = bytes(buf[: len(HELLO)])
            if not HELLO.startswith(head):
                self._reject("-", "expected a CLAWPOT-HELLO line")
                return None
            newline = buf.find(b"\n", 0, MAX_LINE)
            if newline < 0:
                if len(buf) >= MAX_LINE:
                    self._reject("-", "hello line too long")
                return None
            try:
                return parse_hello(bytes(buf[:newline])), bytes(buf[newline + 1 :])
            except ValueError as exc:
                self._reject("-", str(exc))
                return None
        # Serial: skip stale bytes until a well-formed HELLO line.
        while True:
            at = buf.find(HELLO)
            if at < 0:
                del buf[: max(0, len(buf) - len(HELLO) + 1)]
                return None
            del buf[:at]
            newline = buf.find(b"\n", 0, MAX_LINE)
            if newline < 0:
                if len(buf) < MAX_LINE:
                    return None
                del buf[:1]
                continue
            line = bytes(buf[:newline])
            del buf[: newline + 1]
            try:
                return parse_hello(line), bytes(buf)
            except ValueError:
                log.info("%s: skipping malformed hello line", self.link.name)

    def _reject(self, nonce: str, reason: str) -> None:
        log.warning("%s: rejecting host: %s", self.link.name, reason)
        self.link.write(reject_line(nonce, reason))
        if not self.link.resync:
            self.closed = True
            self.link.end_session(b"")

    def _fatal(self, code: ErrorCode, message: str) -> None:
        """The byte stream is unparseable: report it and end this host session."""
        if self.link.resync:
            # Also how a host that reconnected (zero filler, then HELLO) ends the session we still had.
            self.send_error(0, code, f"{message}; resynchronising", fatal=True, level=logging.INFO)
        else:
            self.send_error(0, code, message, fatal=True)
        rest = self._decoder.rest()
        self.lost(f"protocol error ({message})")
        self.link.end_session(rest)

    # --- frames ----------------------------------------------------------------------------------------

    def _dispatch(self, frame: Frame) -> None:
        ftype = frame.type
        if ftype == FrameType.PING:
            self.send(FrameType.PONG, frame.stream, frame.payload)
        elif ftype == FrameType.OPEN:
            self._open(frame)
        elif ftype in _STREAM_FRAMES:
            session = self.sessions.get(frame.stream)
            if session is None:
                # Frames racing a session's end (a WINDOW after END) are normal; ids never opened are not.
                if not 0 < frame.stream <= self._highest_stream:
                    self.send_error(0, ErrorCode.UNKNOWN_STREAM, f"stream {frame.stream} was never opened")
                return
            try:
                session.handle(frame)
            except SessionError as exc:
                session.fail(exc.code, str(exc), exc.errno)
        elif ftype == FrameType.ERROR:
            log.warning(
                "%s: host reported an error on stream %d: %r",
                self.link.name,
                frame.stream,
                frame.payload[:200],
            )
        elif ftype in _AGENT_ONLY_FRAMES:
            self.send_error(0, ErrorCode.UNEXPECTED_FRAME, f"frame type 0x{ftype:02x} is for agents to send")
        else:
            self.send_error(0, ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{ftype:02x} ignored")

    def _open(self, frame: Frame) -> None:
        sid = frame.stream
        if sid == 0:
            self.send_error(0, ErrorCode.BAD_REQUEST, "OPEN on stream 0 (reserved for the connection)")
            return
        if sid <= self._highest_stream:
            self.send_error(0, ErrorCode.STREAM_IN_USE, f"stream {sid} reused (ids must increase)")
            return
        self._highest_stream = sid
        if len(self.sessions) >= MAX_SESSIONS:
            self.send_error(sid, ErrorCode.TOO_MANY_SESSIONS, f"at most {MAX_SESSIONS} concurrent sessions")
            return
        try:
            request = decode_json(frame.payload)
        except ValueError as exc:
            self.send_error(sid, ErrorCode.BAD_REQUEST, str(exc))
            return
        op = request.get("op")
        factory = self.ctx.ops.get(op) if isinstance(op, str) else None
        if factory is None:
            self.send_error(sid, ErrorCode.UNKNOWN_OP, f"unknown operation {op!r}")
            return
        try:
            session = factory(self, sid, request)
        except SessionError as exc:
            self.send_error(sid, exc.code, str(exc), errno=exc.errno)
            return
        self.sessions[sid] = session
        try:
            session.start()
        except SessionError as exc:
            session.fail(exc.code, str(exc), exc.errno)
