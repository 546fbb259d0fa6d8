"""One connection to an agent: handshake, a reader task, and the streams multiplexed over it.

Shaped like qemu.qmp's protocol class: an explicit run state guarding the public methods, replies matched
to requests through a pending map, and one disconnect path that every reader or writer error goes through
and that fails every waiter with the same clear error.

The guest is untrusted, so everything it can make this side hold is bounded (limits.py, "Agent channel"):
DATA by the credit we grant, queued control frames and our unsent output by a per-connection budget,
PONGs by not answering while the guest does not read, and frames we throw away by a token bucket. A guest
that breaks a bound loses its connection, and ``violation`` says why (None for an ordinary disconnect).
Text the guest sends reaches the log escaped, shortened and rate-limited (``untrusted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from clawpot.agent.protocol import (
    DEFAULT_WINDOW,
    HEADER_SIZE,
    MAX_LINE,
    MAX_PAYLOAD,
    MAX_WINDOW,
    REJECT,
    RESIZE_PAYLOAD,
    SIGNAL_PAYLOAD,
    WELCOME,
    WINDOW_PAYLOAD,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Pipe,
    decode_json,
    encode_frame,
    encode_json,
    find_line,
    hello_line,
)
from clawpot.agent_client.chunks import ChunkReader
from clawpot.agent_client.errors import AgentDisconnected, GuestError, ProtocolError, RemoteError
from clawpot.agent_client.untrusted import TokenBucket, limiter_for, printable
from clawpot.limits import (
    AGENT_HANDSHAKE_MAX_STALE,
    AGENT_HOST_BUFFER_BUDGET,
    AGENT_IGNORED_FRAMES_BURST,
    AGENT_IGNORED_FRAMES_PER_S,
    AGENT_PONG_HIGH_WATER,
    AGENT_RECEIVE_WINDOW,
    AGENT_STREAM_CONTROL_FRAMES,
)

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
RESYNC_FILLER = bytes(HEADER_SIZE + MAX_PAYLOAD)
# Credit we give the agent per stream (limits.py says why this much).
RECEIVE_WINDOW = AGENT_RECEIVE_WINDOW
# Longest code and message of an agent's error we pass on (in exceptions, hence to API clients).
_ERROR_CODE_CHARS = 64
_ERROR_MESSAGE_CHARS = 500
# An errno name as the agent reports it (errno.errorcode values: ENOENT, EEXIST, ...).
_ERRNO_NAME = re.compile(r"E[A-Z0-9]{1,15}")


class RunState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class AgentInfo:
    """What the agent said about itself in its WELCOME line."""

    version: int
    pid: int | None
    hostname: str
    guest: bool
    details: dict[str, Any] = field(default_factory=dict)


def _remote_error(frame: Frame) -> RemoteError:
    try:
        body = decode_json(frame.payload)
    except ValueError:
        body = {}
    errno = body.get("errno")
    return RemoteError(
        printable(str(body.get("code", "unknown")), _ERROR_CODE_CHARS),
        printable(str(body.get("message", "agent reported an error")), _ERROR_MESSAGE_CHARS),
        errno if isinstance(errno, str) and _ERRNO_NAME.fullmatch(errno) else None,
    )


def guest_json(frame: Frame, what: str) -> dict[str, Any]:
    """The JSON object in an agent's frame; anything else is a ProtocolError (never a ValueError that
    would surface as an internal error of the caller)."""
    try:
        return decode_json(frame.payload)
    except ValueError as exc:
        raise ProtocolError(f"malformed {what} from the agent: {printable(str(exc), 100)}") from None


def guest_int(body: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int | None:
    """``body[key]`` when it is an int in [lo, hi], None when absent or null; else a ProtocolError."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"malformed {what} from the agent: {key}={printable(repr(value), 40)}")
    return value


class GuestViolation(Exception):
    """The guest broke a bound of the channel: the connection is dropped (never leaves this module)."""


class _Chunk:
    """DATA of one pipe, coalesced while it waits for the consumer: a flood of tiny frames costs the
    bytes it carries, not one Python object per frame."""

    __slots__ = ("data", "pipe")

    def __init__(self, pipe: int, data: bytes) -> None:
        self.pipe = pipe
        # The frame's own bytes until a second frame joins (a consumer that keeps up never pays a copy).
        self.data: bytes | bytearray = data

    def append(self, data: bytes) -> None:
        if isinstance(self.data, bytes):
            self.data = bytearray(self.data)
        self.data += data

    def take(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else bytes(self.data)


# Frames a consumer may be handed besides DATA: at most AGENT_STREAM_CONTROL_FRAMES of them per stream.
_CONTROL = frozenset({FrameType.INFO, FrameType.EOF})


class Stream:
    """One session on the connection, from the host's side.

    What waits here for the consumer is bounded: DATA by the credit we granted (``window``), INFO and EOF
    by a count, END/ERROR once. Other frames are counted as ignored by the connection.
    """

    def __init__(self, conn: AgentConnection, stream_id: int, window: int) -> None:
        self.id = stream_id
        self._conn = conn
        self._items: deque[Frame | _Chunk] = deque()
        self._ready = asyncio.Event()
        self._window = window
        self._unacked = 0
        self._recv_credit = window  # DATA the agent may still send us
        self._control_frames = 0
        self._credit = asyncio.Event()
        self.send_window = DEFAULT_WINDOW
        self.final: Frame | None = None  # END or ERROR
        self._lost: GuestError | None = None

    @property
    def finished(self) -> bool:
        return self.final is not None or self._lost is not None

    # --- called by the reader task ---------------------------------------------------------------------

    def _deliver(self, frame: Frame) -> None:
        ftype = frame.type
        if ftype == FrameType.DATA:
            if not frame.payload:
                self._conn._ignored("empty DATA")
                return
            self._recv_credit -= len(frame.payload)
            if self._recv_credit < 0:
                # Our memory bound depends on the agent honouring the window: refuse to buffer more.
                raise FrameError(ErrorCode.WINDOW_EXCEEDED, f"agent overran the window of stream {self.id}")
            last = self._items[-1] if self._items else None
            if (
                isinstance(last, _Chunk)
                and last.pipe == frame.flags
                and len(last.data) + len(frame.payload) <= MAX_PAYLOAD
            ):
                last.append(frame.payload)
            else:
                self._items.append(_Chunk(frame.flags, frame.payload))
            self._ready.set()
            return
        if ftype == FrameType.WINDOW:
            if len(frame.payload) != WINDOW_PAYLOAD.size:
                self._conn._ignored("malformed WINDOW")
                return
            # Clamped: credit beyond MAX_WINDOW means nothing, and keeps the number small.
            self.send_window = min(self.send_window + WINDOW_PAYLOAD.unpack(frame.payload)[0], MAX_WINDOW)
            self._credit.set()
            return
        if ftype in _CONTROL:
            self._control_frames += 1
            if self._control_frames > AGENT_STREAM_CONTROL_FRAMES:
                raise GuestViolation(
                    f"more than {AGENT_STREAM_CONTROL_FRAMES} INFO/EOF frames on stream {self.id}"
                )
        elif ftype in (FrameType.END, FrameType.ERROR):
            self.final = frame
            self._credit.set()
        else:
            self._conn._ignored(f"frame type 0x{ftype:02x} on a stream")
            return
        self._conn._queue_control(len(frame.payload))
        self._items.append(frame)
        self._ready.set()

    def _fail(self, exc: GuestError) -> None:
        self._lost = exc
        self._credit.set()
        self._ready.set()

    # --- receiving -------------------------------------------------------------------------------------

    async def recv(self) -> Frame:
        """The next frame (what arrived before a disconnect first; then the disconnect's error)."""
        while not self._items:
            if self._lost is not None:
                raise self._lost
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, _Chunk):
            return Frame(FrameType.DATA, self.id, item.pipe, item.take())
        self._conn._queue_control(-len(item.payload))
        return item

    async def recv_until(self, *types: FrameType) -> Frame:
        """Next frame of one of ``types``; an ERROR raises RemoteError."""
        while True:
            frame = await self.recv()
            if frame.type == FrameType.ERROR:
                raise _remote_error(frame)
            if frame.type in types:
                return frame

    def consumed(self, nbytes: int) -> None:
        """The caller took ``nbytes`` of DATA: give the agent that much credit back (batched)."""
        self._unacked += nbytes
        if self._unacked >= self._window // 4 and not self.finished:
            self._conn.send_nowait(FrameType.WINDOW, self.id, WINDOW_PAYLOAD.pack(self._unacked))
            self._recv_credit += self._unacked
            self._unacked = 0

    # --- sending ---------------------------------------------------------------------------------------

    def _raise_if_finished(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self.final is not None:
            if self.final.type == FrameType.ERROR:
                raise _remote_error(self.final)
            raise RemoteError(
                "session_ended", f"stream {self.id} has already ended (process exited or transfer done)"
            )

    async def send_data(self, data: bytes, pipe: Pipe = Pipe.STDIN) -> None:
        """Send ``data``, waiting for credit from the agent as needed."""
        view = memoryview(data)
        while view:
            while self.send_window <= 0:
                self._raise_if_finished()
                self._credit.clear()
                await self._credit.wait()
            self._raise_if_finished()
            n = min(len(view), MAX_PAYLOAD, self.send_window)
            self.send_window -= n
            self._conn.send_nowait(FrameType.DATA, self.id, bytes(view[:n]), pipe)
            view = view[n:]
            await self._conn.drain()

    async def send_eof(self, pipe: Pipe = Pipe.STDIN) -> None:
        self._raise_if_finished()
        self._conn.send_nowait(FrameType.EOF, self.id, b"", pipe)
        await self._conn.drain()

    async def send_signal(self, signo: int, group: bool = True) -> None:
        self._raise_if_finished()
        self._conn.send_nowait(FrameType.SIGNAL, self.id, SIGNAL_PAYLOAD.pack(signo, int(group)))
        await self._conn.drain()

    async def send_resize(self, rows: int, cols: int) -> None:
        self._raise_if_finished()
        self._conn.send_nowait(FrameType.RESIZE, self.id, RESIZE_PAYLOAD.pack(rows, cols))
        await self._conn.drain()

    def close(self) -> None:
        """Forget the stream; if the agent has not ended it, ask it to (kills an exec's processes)."""
        if not self.finished and self._conn.state is RunState.RUNNING:
            self._conn.send_nowait(FrameType.CANCEL, self.id)
        self._conn._forget(self)


class AgentConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
        info: AgentInfo,
        leftover: bytes,
    ) -> None:
        self.name = name
        self.info = info
        self.state = RunState.RUNNING
        self._reader = reader
        self._writer = writer
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._agent_error: str | None = None
        self._closed_reason = ""
        # Why the guest lost its connection, when it broke a bound; None for an ordinary disconnect.
        self.violation: str | None = None
        self._queued_control = 0  # payload bytes of INFO/EOF/END/ERROR frames waiting for consumers
        self._ignored_budget = TokenBucket(AGENT_IGNORED_FRAMES_BURST, AGENT_IGNORED_FRAMES_PER_S)
        self._ignored_kinds: Counter[str] = Counter()
        # Keyed by the endpoint, so the limit holds across reconnects to the same VM.
        self._log = limiter_for(name)
        self._reader_task = asyncio.create_task(self._read_loop(leftover), name=f"agent-reader {name}")

    @classmethod
    async def open(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, *, resync: bool = False
    ) -> AgentConnection:
        """Run the handshake on a fresh byte stream. The caller bounds it with a timeout.

        ``resync``: the stream is a serial line that outlives connections (see ``_handshake``).
        """
        info, leftover = await _handshake(reader, writer, name, resync)
        return cls(reader, writer, name, info, leftover)

    # --- sending ---------------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.state is not RunState.RUNNING:
            raise AgentDisconnected(f"connection to agent at {self.name} is closed: {self._closed_reason}")

    def send_nowait(self, ftype: FrameType, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        self._check_running()
        self._writer.write(encode_frame(ftype, stream, payload, flags))
        if self._over_budget():
            # Only a guest that stops reading lets our own output pile up this far.
            self._violate(self._budget_reason())
            self._check_running()

    # --- bounds ----------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes this side holds for the guest's sake, outside the credit it was granted."""
        return self._writer.transport.get_write_buffer_size() + self._queued_control

    def _over_budget(self) -> bool:
        return self.buffered > AGENT_HOST_BUFFER_BUDGET

    def _budget_reason(self) -> str:
        unsent = self._writer.transport.get_write_buffer_size()
        return (
            f"host-side buffer budget of {AGENT_HOST_BUFFER_BUDGET} bytes exceeded "
            f"({unsent} bytes unsent because the guest does not read, "
            f"{self._queued_control} bytes of queued control frames)"
        )

    def _queue_control(self, nbytes: int) -> None:
        self._queued_control += nbytes
        if nbytes > 0 and self._over_budget():
            raise GuestViolation(self._budget_reason())

    def _ignored(self, kind: str) -> None:
        """A frame read and thrown away: free for a well-behaved agent, a flood breaks the bucket."""
        self._ignored_kinds[kind] += 1
        if not self._ignored_budget.allow():
            kinds = ", ".join(f"{n} {k}" for k, n in self._ignored_kinds.most_common(4))
            raise GuestViolation(
                f"flood of frames the host ignores (more than {AGENT_IGNORED_FRAMES_BURST} at once or "
                f"{AGENT_IGNORED_FRAMES_PER_S}/s; seen: {kinds})"
            )

    def _violate(self, reason: str) -> None:
        if self.state is not RunState.RUNNING:
            return
        self.violation = reason
        self._log.log(
            log,
            logging.WARNING,
            "agent at %s: guest violation, dropping the connection: %s",
            self.name,
            reason,
        )
        self._disconnect(f"guest violation: {reason}")

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._disconnect(f"write failed: {exc}")
            self._check_running()

    def open_stream(self, request: dict[str, Any], window: int = RECEIVE_WINDOW) -> Stream:
        self._check_running()
        payload = encode_json({**request, "window": window})
        if len(payload) > MAX_PAYLOAD:  # checked before the stream exists: nothing to forget after
            raise ValueError(f"request of {len(payload)} bytes exceeds a frame ({MAX_PAYLOAD})")
        stream = Stream(self, self._next_id, window)
        self._next_id += 1
        self._streams[stream.id] = stream
        self.send_nowait(FrameType.OPEN, stream.id, payload)
        return stream

    def _forget(self, stream: Stream) -> None:
        self._streams.pop(stream.id, None)

    async def ping(self) -> float:
        """Round trip to the agent's event loop, in seconds."""
        token = secrets.token_bytes(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[token] = fut
        started = time.perf_counter()
        try:
            self.send_nowait(FrameType.PING, 0, token)
            await self.drain()
            await fut
        finally:
            self._pings.pop(token, None)
        return time.perf_counter() - started

    # --- receiving -------------------------------------------------------------------------------------

    async def _read_loop(self, leftover: bytes) -> None:
        decoder = FrameDecoder()
        reason = "agent closed the connection"
        try:
            # From here on the socket's chunks are parsed as they come (chunks.py says why).
            source, held = await ChunkReader.take_over(self._reader, self._writer)
            for data in (leftover, held):
                decoder.feed(data)
                while (frame := decoder.next()) is not None:
                    self._dispatch(frame)
            while True:
                data = await source.read()
                if not data:
                    break
                decoder.feed(data)
                while (frame := decoder.next()) is not None:
                    self._dispatch(frame)
        except GuestViolation as exc:
            self._violate(str(exc))
            reason = f"guest violation: {exc}"
        except FrameError as exc:
            self._violate(f"protocol violation: {exc}")
            reason = f"protocol violation by the agent: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"read failed: {exc}"
        except asyncio.CancelledError:
            reason = "closed by the client"
        except GuestError as exc:  # a send from here found the connection already dropped
            reason = str(exc)
        except Exception as exc:  # a bug here must still fail every waiter, not leave them hanging
            log.exception("agent connection %s: reader failed", self.name)
            reason = f"internal error in the client: {exc!r}"
        finally:
            if self._agent_error and self.state is RunState.RUNNING:
                reason = f"{reason} ({self._agent_error})"
            self._disconnect(reason)

    def _dispatch(self, frame: Frame) -> None:
        """Act on one frame from the guest. Nothing here grows without a bound (see the module doc)."""
        ftype = frame.type
        if frame.stream and ftype not in (FrameType.PING, FrameType.PONG):
            stream = self._streams.get(frame.stream)
            if stream is not None:
                if ftype in (FrameType.END, FrameType.ERROR):
                    self._streams.pop(frame.stream, None)
                stream._deliver(frame)
            elif frame.stream >= self._next_id:
                raise GuestViolation(f"frame type 0x{ftype:02x} for stream {frame.stream}, never opened")
            else:
                self._ignored("frame for a closed stream")  # the tail of a stream we let go of
            return
        if ftype == FrameType.PONG:
            fut = self._pings.get(frame.payload)
            if fut is not None and not fut.done():
                fut.set_result(None)
            else:
                self._ignored("unexpected PONG")
        elif ftype == FrameType.PING:
            # The agent has no reason to ping us: answer within the bucket, and only while the guest
            # reads what we send (a guest that does not read gets no PONGs to pile up).
            self._ignored("PING")
            if self._writer.transport.get_write_buffer_size() < AGENT_PONG_HIGH_WATER:
                self.send_nowait(FrameType.PONG, frame.stream, frame.payload)
        elif ftype == FrameType.ERROR:
            self._ignored("stream-0 ERROR")
            self._agent_error = str(_remote_error(frame))
            self._log.log(log, logging.WARNING, "agent at %s reports: %s", self.name, self._agent_error)
        else:
            self._ignored(f"frame type 0x{ftype:02x} on stream 0")

    # --- disconnect ------------------------------------------------------------------------------------

    def _disconnect(self, reason: str) -> None:
        if self.state is RunState.CLOSED:
            return
        was_closing = self.state is RunState.CLOSING
        self.state = RunState.CLOSED
        self._closed_reason = reason
        if not was_closing:
            self._log.log(log, logging.INFO, "connection to agent at %s lost: %s", self.name, reason)
        error = AgentDisconnected(f"connection to agent at {self.name} lost: {reason}")
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(error)
        self._close_transport()

    def _close_transport(self) -> None:
        # close() would wait to flush what is unsent, forever if the guest does not read, holding the
        # memory and (on a serial port) the VM's one connection: drop unsent bytes instead.
        if self._writer.transport.get_write_buffer_size():
            self._writer.transport.abort()
        else:
            self._writer.close()

    async def close(self) -> None:
        if self.state is RunState.RUNNING:
            self.state = RunState.CLOSING
            self._closed_reason = "closed by the client"
            self._close_transport()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def wait_closed(self) -> str:
        """Wait until the agent side goes away; returns why."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._reader_task)
        return self._closed_reason


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, resync: bool
) -> tuple[AgentInfo, bytes]:
    """Send HELLO with a fresh nonce and skip everything up to the agent's answer carrying that nonce.

    On a serial line the agent may still be inside a frame of the previous host (if it missed the
    disconnect): zeros the size of the largest frame complete that frame, then fail as a header (bad
    magic), which makes the agent drop the old session and scan for our HELLO.
    """
    nonce = secrets.token_hex(8)
    if resync:
        writer.write(RESYNC_FILLER)
    writer.write(hello_line(nonce))
    await writer.drain()
    welcome = WELCOME + nonce.encode() + b" "
    rejects = (REJECT + nonce.encode() + b" ", REJECT + b"- ")
    buf = bytearray()
    skipped = 0
    while True:
        for prefix in rejects:
            if (found := find_line(buf, prefix)) is not None:
                reason = printable(bytes(buf[found[0] + len(prefix) : found[1]]))
                raise ProtocolError(f"agent at {name} rejected the handshake: {reason}")
        if (found := find_line(buf, welcome)) is not None:
            at, newline = found
            return _parse_welcome(bytes(buf[at + len(welcome) : newline]), name), bytes(buf[newline + 1 :])
        # Keep only what could still become one of our lines.
        keep_from = min((i for i in (buf.find(p) for p in (welcome, *rejects)) if i >= 0), default=-1)
        if keep_from < 0:
            keep_from = max(0, len(buf) - len(welcome))
        elif len(buf) - keep_from > 64 * MAX_LINE:
            raise ProtocolError(f"agent at {name} sent an overlong handshake line")
        skipped += keep_from
        del buf[:keep_from]
        if skipped > AGENT_HANDSHAKE_MAX_STALE:
            # Not "speaks another protocol": a guest flooding the port looks like this; a fresh
            # connection may do better (the caller retries until its deadline).
            raise AgentDisconnected(f"agent at {name}: no handshake reply in {skipped} bytes")
        chunk = await reader.read(_READ_SIZE)
        if not chunk:
            raise ConnectionResetError("connection closed before the agent answered the handshake")
        buf += chunk


def _parse_welcome(rest: bytes, name: str) -> AgentInfo:
    version_text, _, info_text = rest.partition(b" ")
    try:
        version = int(version_text)
        details = decode_json(info_text) if info_text else {}
    except ValueError as exc:
        raise ProtocolError(f"agent at {name} sent a malformed welcome: {printable(str(exc))}") from None
    pid = details.get("pid")
    return AgentInfo(
        version=version,
        pid=pid if isinstance(pid, int) else None,
        hostname=printable(str(details.get("hostname", "")), 253),  # guest-supplied: kept short and safe
        guest=bool(details.get("guest", False)),
        details=details,
    )
